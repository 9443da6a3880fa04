/**
 * Commands as a person types them (the README's): run by `sh` in a directory, with the machine's PATH, HOME and npm
 * settings and none of the test runner's loaders; and a copy of the repository as a fresh clone has it.
 */
import { spawn, execFileSync } from 'node:child_process'
import { copyFileSync, existsSync, mkdirSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { packageRoot } from '../../lib/package.js'

interface Teardown { teardown(fn: () => unknown): void }

/** PATH, HOME and the npm settings of this machine, with `extra` over them. */
export function shellEnv (extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, HOME: process.env.HOME }
  for (const [key, value] of Object.entries(process.env)) if (key.startsWith('npm_config_')) env[key] = value
  return { ...env, ...extra }
}

export interface Shell {
  output: () => string
  exit: Promise<number | null>
  /** resolves with the first match of `pattern` in the output; rejects when the command ends first */
  waitFor (pattern: RegExp): Promise<RegExpExecArray>
  /** SIGTERM to the command and everything it started (its process group); resolves when it ended */
  stop (): Promise<void>
}

/** Starts `command` in `cwd` (its own process group, stopped at teardown at the latest). */
export function sh (t: Teardown, command: string, cwd: string, env: NodeJS.ProcessEnv = {}): Shell {
  const child = spawn('sh', ['-c', command], { cwd, env: shellEnv(env), stdio: ['ignore', 'pipe', 'pipe'], detached: true })
  let output = ''
  const waiting = new Set<() => void>()
  const heard = (d: Buffer): void => {
    output += d.toString()
    for (const check of waiting) check()
  }
  child.stdout.on('data', heard)
  child.stderr.on('data', heard)
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)))
  const stop = async (): Promise<void> => {
    if (child.exitCode !== null || child.signalCode !== null) return
    try {
      process.kill(-(child.pid ?? 0), 'SIGTERM')
    } catch {
      // ended meanwhile
    }
    await exit
  }
  t.teardown(stop)
  return {
    output: () => output,
    exit,
    stop,
    waitFor: async (pattern) => await new Promise((resolve, reject) => {
      const check = (): void => {
        const match = pattern.exec(output)
        if (match === null) return
        waiting.delete(check)
        resolve(match)
      }
      waiting.add(check)
      check()
      void exit.then((code) => {
        if (!waiting.has(check)) return
        waiting.delete(check)
        reject(new Error(`"${command}" ended (${code}) before ${String(pattern)}: ${output.slice(-3000)}`))
      })
    })
  }
}

/** Runs `command` to its end; rejects when it fails, with its output. */
export async function run (t: Teardown, command: string, cwd: string, env: NodeJS.ProcessEnv = {}): Promise<string> {
  const shell = sh(t, command, cwd, env)
  const code = await shell.exit
  if (code !== 0) throw new Error(`"${command}" exited with ${code}: ${shell.output().slice(-3000)}`)
  return shell.output()
}

/**
 * Copies the repository's files as a clone of it has them once this work is committed (tracked and new files, none
 * that git ignores: no node_modules, no dist) to `dest`.
 */
export function freshCopy (dest: string): void {
  const files = execFileSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: packageRoot, encoding: 'utf8', maxBuffer: 16 << 20 })
    .split('\0').filter((file) => file !== '' && existsSync(join(packageRoot, file)))
  for (const file of files) {
    mkdirSync(dirname(join(dest, file)), { recursive: true })
    copyFileSync(join(packageRoot, file), join(dest, file))
  }
}
