/**
 * The fast way to the compiled tests: strips the types of lib/, bin/, examples/ and test/ into dist/ (one file in,
 * one file out, imports as written, source maps for coverage and stack traces), the same layout `tsc -p
 * tsconfig.json` emits, in well under a second and without checking anything. `npm run test:unit` uses it; `npm test`
 * compiles with tsc, which checks the types as it goes.
 */
import { readdirSync, rmSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { build } from 'esbuild'

const root = fileURLToPath(new URL('..', import.meta.url))
/** what neither tap nor the benchmarks run */
const skipped = new Set(['test/types', 'test/bench/results', 'test/chaos/results', 'test/artifacts'])

function sources (dir) {
  return readdirSync(join(root, dir), { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) return skipped.has(path) ? [] : sources(path)
    return entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts') ? [path] : []
  })
}

// a test file removed or renamed must not keep running from an old build
rmSync(join(root, 'dist'), { recursive: true, force: true })
await build({
  absWorkingDir: root,
  entryPoints: ['lib', 'bin', 'examples', 'test'].flatMap(sources),
  outdir: 'dist',
  outbase: '.',
  format: 'esm',
  platform: 'node',
  target: 'node20',
  sourcemap: true,
  logLevel: 'warning'
})
