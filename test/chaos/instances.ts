/**
 * The standalone servers of a chaos run: `bin/serve` child processes like test/helpers/serve.ts starts, with two
 * differences the run needs. The path of bin/serve is found from the package root, so this works both from the
 * sources (tap) and from dist/ (`npm run chaos`), where the helper's path (relative to its own file) would be
 * dist/bin/serve, which does not exist. And the logs go to a file rather than memory: a 100,000-change run logs a lot.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { createWriteStream } from 'node:fs'
import { join } from 'node:path'
import { packageRoot } from '../../lib/package.js'

interface Teardown { teardown(fn: () => unknown): void }

export interface Instance {
  child: ChildProcess
  pid: number
  /** ws://…/ws once it listens */
  url: string
  exited: boolean
  stop(signal?: NodeJS.Signals): Promise<void>
}

/** Starts one instance; resolves once its "Server listening at" line is logged. Stopped at teardown. */
export async function startInstance (t: Teardown, configFile: string, logFile: string): Promise<Instance> {
  const child = spawn(process.execPath, [join(packageRoot, 'bin', 'serve'), '--config', configFile], {
    env: { PATH: process.env.PATH, LOG_LEVEL: process.env.CHAOS_LOG_LEVEL ?? 'info' },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  const log = createWriteStream(logFile, { flags: 'a' })
  child.stdout.pipe(log)
  child.stderr.pipe(log)
  const exit = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  let head = ''
  const url = await new Promise<string>((resolve, reject) => {
    const onData = (d: Buffer): void => {
      head += d.toString()
      const m = /Server listening at (http:\/\/[^"\s]+)/.exec(head)
      if (m === null) return
      child.stdout.off('data', onData)
      resolve(m[1].replace('http', 'ws') + '/ws')
    }
    child.stdout.on('data', onData)
    void exit.then(() => reject(new Error(`server exited with ${child.exitCode ?? child.signalCode}; log: ${logFile}\n${head.slice(-2000)}`)))
  })
  const instance: Instance = {
    child,
    pid: child.pid!,
    url,
    exited: false,
    async stop (signal = 'SIGTERM') {
      if (child.exitCode !== null || child.signalCode !== null) return
      child.kill(signal)
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000)
      await exit
      clearTimeout(timer)
    }
  }
  void exit.then(() => { instance.exited = true })
  t.teardown(async () => {
    await instance.stop()
    log.end()
  })
  return instance
}
