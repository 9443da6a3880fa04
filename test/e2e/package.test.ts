/**
 * The package as a consumer gets it: what the tarball holds; and the tarball made and installed with the README's
 * commands (a clone beside a host project: `npm pack` there, the tarball installed here, `npx fastify-changefeed
 * --demo`), as a host would (small: no PGlite, no OpenTelemetry SDK), whose types and the README's host examples
 * compile and whose bin runs the demo from there (fetching PGlite on first use), delivers the live match and stops
 * on SIGTERM.
 */
import t from 'tap'
import { execFile } from 'node:child_process'
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { promisify } from 'node:util'
import { packageRoot, packageVersion } from '../../lib/package.js'
import { serve } from '../helpers/serve.js'
import { TestClient, isNotification } from '../helpers/client.js'
import { readDocument, shellBlocks } from '../helpers/docs.js'
import { freshCopy, run, sh, shellEnv } from '../helpers/shell.js'
import { freePort } from '../helpers/brokers.js'

// an npm install, a PGlite fetch and a TypeScript program: minutes on a busy machine
t.setTimeout(900_000)

/** npm without the test runner's loaders in its environment. */
async function npm (args: string[], cwd: string): Promise<string> {
  const { stdout } = await promisify(execFile)('npm', args, { cwd, env: shellEnv(), maxBuffer: 64 << 20, shell: process.platform === 'win32' })
  return stdout
}

/** Bytes of the files under `dir` (symlinks not followed). */
function sizeOf (dir: string): number {
  let bytes = 0
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name)
    bytes += entry.isDirectory() ? sizeOf(path) : lstatSync(path).size
  }
  return bytes
}

t.test('the tarball holds the licence, the README, built code with declarations, the SQL and the demo pages', async (t) => {
  const [{ files }] = JSON.parse(await npm(['pack', '--dry-run', '--json', '--ignore-scripts'], packageRoot)) as Array<{ files: Array<{ path: string }> }>
  const paths = new Set(files.map((f) => f.path))
  const expected = ['LICENSE', 'README.md', 'package.json', 'bin/serve', 'dist/bin/serve.js', 'dist/bin/demo.js', 'dist/bin/pglite.js',
    'dist/lib/index.js', 'dist/lib/index.d.ts', 'dist/lib/client/index.js', 'dist/lib/client/index.d.ts', 'dist/lib/client/react.d.ts',
    'dist/lib/client/tanstack.d.ts', 'sql/changefeed.sql', 'examples/live-scores/index.html', 'examples/live-scores/team.html']
  for (const path of expected) t.ok(paths.has(path), path)
  for (const path of paths) {
    if (!path.endsWith('.map')) continue
    // a source map may ship only with the sources it points at
    const { sources } = JSON.parse(readFileSync(join(packageRoot, path), 'utf8')) as { sources: string[] }
    for (const source of sources) t.ok(paths.has(join(dirname(path), source)), `${path} → ${source} ships`)
  }
  t.notOk([...paths].some((p) => p.startsWith('test/') || p.startsWith('dist/test/')), 'no tests')
})

const work = mkdtempSync(join(tmpdir(), 'changefeed-package-'))
t.teardown(() => rmSync(work, { recursive: true, force: true }))
// the README's layout: the clone, and the host project beside it
const clone = join(work, 'fastify-changefeed')
const app = join(work, 'app')
const [, fromTarball = []] = shellBlocks(readDocument('README.md'))
const demoCommand = fromTarball.find((line) => line.includes('--demo'))
/** this machine's npm settings for the README's commands: from the cache where it can, no audit */
const npmSettings = { npm_config_prefer_offline: 'true', npm_config_audit: 'false', npm_config_fund: 'false' }

t.test('packed and installed with the README\'s commands, as a host installs it', async (t) => {
  freshCopy(clone)
  // what `npm pack` builds with: this checkout's modules (the clone's own install is test/e2e/quickstart.test.ts's)
  symlinkSync(join(packageRoot, 'node_modules'), join(clone, 'node_modules'), 'dir')
  mkdirSync(app)
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'host', private: true, type: 'module' }))
  t.ok(demoCommand !== undefined && fromTarball.length >= 3, `the README's commands: ${fromTarball.join(' ; ')}`)
  for (const command of fromTarball.filter((line) => line !== demoCommand)) await run(t, command, app, npmSettings)
  t.ok(existsSync(join(clone, `fastify-changefeed-${packageVersion}.tgz`)), 'the tarball, made in the clone')
  const modules = join(app, 'node_modules')
  t.ok(existsSync(join(modules, 'fastify-changefeed', 'dist', 'lib', 'index.js')), 'the package')
  t.ok(existsSync(join(modules, 'fastify', 'package.json')), 'fastify, its peer dependency')
  for (const optional of ['@electric-sql/pglite', '@opentelemetry/sdk-metrics', '@opentelemetry/exporter-prometheus', '@fastify/otel']) {
    t.notOk(existsSync(join(modules, optional)), `not ${optional}`)
  }
  const megabytes = sizeOf(modules) / 1e6
  t.comment(`node_modules: ${megabytes.toFixed(1)} MB`)
  t.ok(megabytes < 42, 'at most a third of the 125 MB it was')
})

t.test('its declarations, and the README\'s host examples as written, compile in the host (strict, skipLibCheck false)', async (t) => {
  if (!t.ok(existsSync(join(app, 'node_modules')), 'installed')) return
  // every block of the README that imports the plugin's entry: the host's code, with nothing declared around it
  const examples = [...readDocument('README.md').matchAll(/^```ts\n([\s\S]*?)^```/gm)].map((m) => m[1]).filter((code) => code.includes("from 'fastify-changefeed'\n"))
  t.ok(examples.length >= 2, `${examples.length} host examples`)
  examples.forEach((code, i) => writeFileSync(join(app, `readme-${i}.ts`), code + '\nexport {}\n'))
  writeFileSync(join(app, 'host.ts'), [
    "import Fastify from 'fastify'",
    "import changefeed from 'fastify-changefeed'",
    "import { ChangefeedClient } from 'fastify-changefeed/client'",
    'const app = Fastify()',
    "await app.register(changefeed, { entities: { Team: { access: 'public' } } })",
    "export const client = new ChangefeedClient({ url: 'ws://127.0.0.1:8080/ws', autoConnect: false })",
    ''
  ].join('\n'))
  // Node's own types come from this repository: a host has @types/node; everything else from the install
  writeFileSync(join(app, 'tsconfig.json'), JSON.stringify({
    compilerOptions: {
      target: 'ES2022',
      module: 'NodeNext',
      moduleResolution: 'NodeNext',
      lib: ['ES2023'],
      strict: true,
      skipLibCheck: false,
      noEmit: true,
      types: ['node'],
      typeRoots: [join(packageRoot, 'node_modules', '@types')]
    },
    files: ['host.ts', ...examples.map((_code, i) => `readme-${i}.ts`)]
  }))
  const tsc = join(packageRoot, 'node_modules', 'typescript', 'bin', 'tsc')
  const result = await promisify(execFile)(process.execPath, [tsc, '-p', app], { env: { PATH: process.env.PATH } }).then(() => '', (err: { stdout?: string }) => err.stdout ?? String(err))
  t.equal(result, '', 'tsc reports nothing')
})

t.test('in the host install, a setting that needs a package it lacks stops with CHANGEFEED_MISSING_PACKAGE', async (t) => {
  const bin = join(app, 'node_modules', '.bin', 'fastify-changefeed')
  if (!t.ok(existsSync(bin), 'installed')) return
  const config = join(work, 'prometheus.json')
  // never reached: the start stops before any connection
  writeFileSync(config, JSON.stringify({ databases: [{ name: 'main', url: 'postgres://127.0.0.1:1/none' }], telemetry: { prometheus: true } }))
  const cases: Array<[string, string[], NodeJS.ProcessEnv, string[]]> = [
    ['telemetry.prometheus', ['--config', config], {}, ['@opentelemetry/sdk-metrics', '@opentelemetry/exporter-prometheus']],
    ['a pglite:// database without --demo', [], { DATABASE_URL: 'pglite://memory' }, ['@electric-sql/pglite']]
  ]
  for (const [what, args, env, packages] of cases) {
    const server = serve(t, [...args, '--port', '0'], env, { bin, cwd: app })
    t.equal((await server.exit).code, 1, what)
    const lines = server.stderr().split('\n').filter((line) => line !== '')
    t.equal(lines.length, 1, 'one line on stderr')
    t.match(lines[0], /CHANGEFEED_MISSING_PACKAGE/)
    for (const name of packages) t.ok(lines[0].includes(name), `names ${name}`)
  }
})

t.test('the README\'s demo command runs the demo from the host project, fetching PGlite on first use', async (t) => {
  if (!t.ok(existsSync(join(app, 'node_modules', '.bin', 'fastify-changefeed')), 'installed') || demoCommand === undefined) return
  const port = await freePort()
  const demo = sh(t, demoCommand, app, { ...npmSettings, PORT: String(port), CHANGEFEED_CACHE_DIR: join(work, 'cache') })
  const [, address] = await demo.waitFor(/--demo: open (http:\/\/\S+)/)
  t.match(demo.output(), /fetching @electric-sql\/pglite/, 'PGlite was fetched for the demo')
  t.match(await (await fetch(address + '/')).text(), /Match centre/, 'the match centre')
  await demo.stop()
})

t.test('its bin runs the demo from the host directory and stops on SIGTERM', async (t) => {
  const bin = join(app, 'node_modules', '.bin', 'fastify-changefeed')
  if (!t.ok(existsSync(bin), 'installed')) return
  t.equal(realpathSync(bin), realpathSync(join(app, 'node_modules', 'fastify-changefeed', 'bin', 'serve')), 'the package\'s own bin')
  const server = serve(t, ['--demo', '--port', '0'], {
    HOME: process.env.HOME, CHANGEFEED_CACHE_DIR: join(work, 'cache'), npm_config_prefer_offline: 'true'
  }, { bin, cwd: app })
  const address = await server.address
  const ws = await TestClient.open(address.replace('http', 'ws') + '/ws')
  t.teardown(() => ws.close())
  t.equal((await ws.subscribe('RugbyGameState', 'match-1')).type, 'subscribed')
  t.match((await ws.next(isNotification('RugbyGameState', 'match-1'), 10_000)).data, { changeType: 'updated', payloadType: 'full', payload: { id: 'match-1' } })
  const stoppedAt = Date.now()
  server.child.kill('SIGTERM')
  t.equal((await ws.closed).code, 1012, 'sockets are drained with 1012 (service restart)')
  t.equal((await server.exit).code, 0, 'exits cleanly')
  t.ok(Date.now() - stoppedAt < 10_000, `within 10 s (${Date.now() - stoppedAt} ms)`)
})
