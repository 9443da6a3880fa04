/** The SDK's size budget, measured on the built bundles: core ≤ 6 KB and React part ≤ 1.5 KB, minified + gzipped. */
import t from 'tap'
import { build } from 'esbuild'
import { gzipSync } from 'node:zlib'
import { fileURLToPath } from 'node:url'

async function gzippedSize (entry: string, external: string[]): Promise<number> {
  const result = await build({
    entryPoints: [fileURLToPath(new URL(entry, import.meta.url))],
    bundle: true, minify: true, format: 'esm', platform: 'browser', target: 'es2020', write: false, external
  })
  return gzipSync(result.outputFiles[0].contents, { level: 9 }).length
}

t.test('core client', async (t) => {
  const size = await gzippedSize('../lib/client/index.ts', [])
  t.comment(`fastify-changefeed/client: ${size} bytes min+gzip`)
  t.ok(size <= 6 * 1024, `${size} ≤ 6144`)
})

t.test('React bindings (beside the core, React external)', async (t) => {
  const size = await gzippedSize('../lib/client/react.ts', ['react', './index.js'])
  t.comment(`fastify-changefeed/react: ${size} bytes min+gzip`)
  t.ok(size <= 1.5 * 1024, `${size} ≤ 1536`)
})
