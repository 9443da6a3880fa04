/**
 * Types as a consumer sees them, against the built package (`npm test` builds first): every entry compiles under
 * NodeNext and bundler resolution with `strict` and the package's own declarations checked; the type tests
 * (tstyche, test/types/*.tst.ts) pass; and every TypeScript block of the documents (README and reference) compiles.
 */
import t from 'tap'
import { execFile } from 'node:child_process'
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { promisify } from 'node:util'
import { packageRoot } from '../../lib/package.js'
import { documents, readDocument } from '../helpers/docs.js'

const here = join(packageRoot, 'test', 'types')
const bin = (name: string, file: string): string => join(packageRoot, 'node_modules', name, file)

/**
 * Runs a compiler in a child process (the TypeScript compiler is slow under the test runner's coverage) and
 * resolves with its exit code and output.
 */
async function run (script: string, args: string[]): Promise<{ code: number, output: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [script, ...args], { cwd: packageRoot, env: { ...process.env, NO_COLOR: '1' }, maxBuffer: 16 << 20 })
    return { code: 0, output: stdout + stderr }
  } catch (err) {
    const e = err as { code?: number, stdout?: string, stderr?: string }
    return { code: e.code ?? -1, output: `${e.stdout ?? ''}${e.stderr ?? ''}` }
  }
}
const tsc = async (tsconfig: string): Promise<{ code: number, output: string }> => await run(bin('typescript', 'bin/tsc'), ['-p', tsconfig])

// four TypeScript programs with their libraries (seconds each on an idle machine, minutes on a busy one)
t.setTimeout(600_000)

t.before(() => {
  if (!existsSync(join(packageRoot, 'dist', 'lib', 'index.d.ts'))) throw new Error('the package is not built: run `npm run build` (npm test does)')
})

for (const mode of ['nodenext', 'bundler']) {
  t.test(`every entry of the package compiles for a consumer (${mode} resolution, strict, skipLibCheck false)`, async (t) => {
    const { code, output } = await tsc(join(here, 'consumer', `tsconfig.${mode}.json`))
    t.equal(code, 0, 'tsc reports nothing', { output })
  })
}

t.test('the type tests pass (tstyche)', async (t) => {
  const { code, output } = await run(bin('tstyche', 'build/bin.js'), [])
  t.equal(code, 0, 'tstyche passes', { output })
})

/**
 * What the README's snippets take from the text around them (the reader's app, sign-in, rendering): declared here
 * so that each block compiles on its own.
 */
const PLACEHOLDERS = `
import type { ChangefeedClient } from 'fastify-changefeed/client'
declare global {
  type Entities = { RugbyGameState: { homeScore: number, awayScore: number }, Team: { name: string } }
  const client: ChangefeedClient<Entities>
  const clerk: { session?: { getToken(): Promise<string | null> } }
  function render (payload: unknown): void
  function refetch (): void
  function refetchTeam (): void
  function showBanner (state: string): void
  function App (): null
}
`

t.test('every TypeScript block of the documents compiles', async (t) => {
  const blocks = documents().flatMap((doc) => {
    const text = readDocument(doc)
    return [...text.matchAll(/^```(ts|tsx)\n([\s\S]*?)^```/gm)].map((block) => ({
      // each block is a module of its own, named after its document and line
      name: `${doc.replace(/[/.]/g, '-')}-line-${text.slice(0, block.index).split('\n').length}.${block[1]}`,
      code: block[2]
    }))
  })
  t.ok(blocks.length >= 3, `found ${blocks.length} blocks`)
  // written inside the package (git ignores the folder), so that 'fastify-changefeed' resolves to it by name
  const dir = join(here, 'readme', 'blocks')
  rmSync(dir, { recursive: true, force: true })
  mkdirSync(dir)
  writeFileSync(join(dir, 'placeholders.d.ts'), PLACEHOLDERS)
  for (const { name, code } of blocks) writeFileSync(join(dir, name), code + '\nexport {}\n')
  const { code, output } = await tsc(join(here, 'readme', 'tsconfig.json'))
  t.equal(code, 0, 'tsc reports nothing', { output })
})
