/** Runs the standalone server (`bin/serve`, the built CLI, unless told another) as a child process. */
import { spawn, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import { packageRoot } from '../../lib/package.js'

const BIN = join(packageRoot, 'bin', 'serve')

interface Teardown { teardown(fn: () => unknown): void }

export interface Served {
  child: ChildProcess
  stdout: () => string
  stderr: () => string
  /** resolves with the http address from the server's "listening" log line */
  address: Promise<string>
  exit: Promise<{ code: number | null, signal: NodeJS.Signals | null }>
}

/** `bin`: another copy of the CLI (an installed package's), run from `cwd`. */
export function serve (t: Teardown, args: string[], env: NodeJS.ProcessEnv = {}, { bin = BIN, cwd }: { bin?: string, cwd?: string } = {}): Served {
  const child = spawn(process.execPath, [bin, ...args], {
    env: { PATH: process.env.PATH, LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
    cwd
  })
  let out = ''
  let err = ''
  const exit = new Promise<{ code: number | null, signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })))
  const address = new Promise<string>((resolve, reject) => {
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString()
      const m = /(?:Server listening at|--demo: open) (http:\/\/[^"\s]+)/.exec(out)
      if (m !== null) resolve(m[1])
    })
    void exit.then(({ code }) => reject(new Error(`server exited with ${code}: ${err.slice(0, 2000)}`)))
  })
  address.catch(() => {})
  child.stderr.on('data', (d: Buffer) => { err += d.toString() })
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM')
      await exit
    }
  })
  return { child, stdout: () => out, stderr: () => err, address, exit }
}
