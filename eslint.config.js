// Lint: neostandard (standard style, TypeScript aware). `npm run lint`; `npm test` runs it first.
import neostandard from 'neostandard'

export default [
  ...neostandard({ ts: true, ignores: ['dist/**', 'test/bench/results/**', 'test/chaos/results/**', 'test/types/readme/**', '.memprobe/**'] }),
  {
    rules: {
      // `void promise` marks a promise that is deliberately not awaited (its errors are handled inside)
      'no-void': ['error', { allowAsStatement: true }]
    }
  }
]
