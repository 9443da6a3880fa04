/**
 * `--demo` where PGlite is not installed. PGlite (27 MB) is an optional peer dependency, so that a host that mounts
 * the plugin does not install it; the demo fetches it on first use with npm into a cache folder, as npx fetches a
 * command, and loads it from there. A configured `pglite://` database never fetches: it needs the package installed.
 */
import { spawn } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs'
import { homedir } from 'node:os'
import { dirname, join } from 'node:path'
import { pathToFileURL } from 'node:url'
import { usePGlite, type PGliteModule } from '../lib/capture/database.js'
import { MissingPackageError } from '../lib/errors.js'
import { installSpec, isInstalled } from '../lib/package.js'

export const PGLITE = '@electric-sql/pglite'

/** CHANGEFEED_CACHE_DIR, else $XDG_CACHE_HOME/fastify-changefeed, else ~/.cache/fastify-changefeed. */
export function cacheFolder (env: NodeJS.ProcessEnv): string {
  return env.CHANGEFEED_CACHE_DIR ?? join(env.XDG_CACHE_HOME ?? join(homedir(), '.cache'), 'fastify-changefeed')
}

/** The npm that runs this process when there is one (npx, npm exec, npm start), else the npm on the PATH. */
function npmCommand (args: string[]): [string, string[]] {
  const cli = process.env.npm_execpath
  return cli !== undefined && /npm-cli\.[cm]?js$/.test(cli) ? [process.execPath, [cli, ...args]] : ['npm', args]
}

async function run (command: string, args: string[], cwd: string): Promise<{ code: number | null, output: string }> {
  return await new Promise((resolve) => {
    const child = spawn(command, args, { cwd, stdio: ['ignore', 'pipe', 'pipe'], shell: process.platform === 'win32' })
    let output = ''
    child.stdout.on('data', (d: Buffer) => { output += d.toString() })
    child.stderr.on('data', (d: Buffer) => { output += d.toString() })
    child.on('error', (err) => resolve({ code: null, output: err.message }))
    child.on('close', (code) => resolve({ code, output }))
  })
}

/**
 * Makes PGlite loadable for `--demo`: nothing to do when it is installed; else it is fetched once into the cache
 * folder (`note` says so first) and the plugin loads it from there. CHANGEFEED_MISSING_PACKAGE when fetching fails.
 */
export async function providePGlite (note: (message: string) => void): Promise<void> {
  if (isInstalled(PGLITE)) return
  const spec = installSpec(PGLITE)
  const folder = join(cacheFolder(process.env), `pglite-${spec.slice(spec.lastIndexOf('@') + 1).replace(/[^0-9A-Za-z.]+/g, '')}`)
  const root = join(folder, 'node_modules', ...PGLITE.split('/'))
  if (!existsSync(join(root, 'package.json'))) {
    note(`--demo needs ${PGLITE} (the embedded PostgreSQL), which is not installed; fetching ${spec} into ${folder}`)
    mkdirSync(dirname(folder), { recursive: true })
    // fetched beside, then moved in place: two starts at once each fetch, and the first move wins
    const work = mkdtempSync(`${folder}.fetching-`)
    writeFileSync(join(work, 'package.json'), '{ "private": true }\n')
    const [command, args] = npmCommand(['install', '--no-save', '--no-package-lock', '--no-audit', '--no-fund', spec])
    const { code, output } = await run(command, args, work)
    if (code !== 0 || !existsSync(join(work, 'node_modules', ...PGLITE.split('/'), 'package.json'))) {
      rmSync(work, { recursive: true, force: true })
      const why = output.trim().split('\n').pop() ?? `npm exited with ${code}`
      throw new MissingPackageError('--demo', PGLITE, `${spec} (fetching it failed: ${why})`)
    }
    try {
      renameSync(work, folder)
    } catch {
      rmSync(work, { recursive: true, force: true })
    }
  }
  const manifest = JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { exports: { '.': { import: { default: string } } } }
  const entry = pathToFileURL(join(root, manifest.exports['.'].import.default)).href
  usePGlite(async () => await import(entry) as PGliteModule)
}
