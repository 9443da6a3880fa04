/**
 * The SDK's size budget, measured on the built bundles: core ≤ 9.5 KB and React part ≤ 1.5 KB, minified + gzipped;
 * and the bundle the package ships for browsers (dist/lib/client/browser.js, `npm run build`) is one module that
 * imports nothing, within the same budget.
 */
import t from 'tap'
import { build } from 'esbuild'
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { gzipSync } from 'node:zlib'
import { packageRoot } from '../../lib/package.js'

// 6 KB until live queries: snapshots, requests for many and filtered feeds took the core from 5.5 KB to 8.2 KB;
// 8.5 KB until presence (members, events, signals): 8.2 KB to 9.1 KB
const CORE_BUDGET = 9.5 * 1024

async function gzippedSize (entry: string, external: string[]): Promise<number> {
  const result = await build({
    entryPoints: [join(packageRoot, entry)],
    bundle: true,
    minify: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2020',
    write: false,
    external
  })
  return gzipSync(result.outputFiles[0].contents, { level: 9 }).length
}

t.test('core client', async (t) => {
  const size = await gzippedSize('lib/client/index.ts', [])
  t.comment(`fastify-changefeed/client: ${size} bytes min+gzip`)
  t.ok(size <= CORE_BUDGET, `${size} ≤ ${CORE_BUDGET}`)
})

t.test('React bindings (beside the core, React external)', async (t) => {
  const size = await gzippedSize('lib/client/react.ts', ['react', './index.js'])
  t.comment(`fastify-changefeed/react: ${size} bytes min+gzip`)
  t.ok(size <= 1.5 * 1024, `${size} ≤ 1536`)
})

t.test('the browser bundle the demo pages load is self-contained and within the budget', async (t) => {
  const bundle = join(packageRoot, 'dist', 'lib', 'client', 'browser.js')
  if (!t.ok(existsSync(bundle), 'built (npm run build)')) return
  // bundling it again pulls in whatever it imports: nothing but itself may come in
  const { metafile } = await build({ entryPoints: [bundle], absWorkingDir: packageRoot, bundle: true, write: false, metafile: true, format: 'esm', platform: 'browser', logLevel: 'silent' })
  t.same(Object.keys(metafile.inputs), ['dist/lib/client/browser.js'], 'imports nothing')
  const size = gzipSync(readFileSync(bundle), { level: 9 }).length
  t.comment(`dist/lib/client/browser.js: ${size} bytes gzip`)
  t.ok(size <= CORE_BUDGET, `${size} ≤ ${CORE_BUDGET}`)
})
