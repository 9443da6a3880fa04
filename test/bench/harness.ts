/**
 * What every benchmark scenario shares: starting servers and peers on free ports, load generators (several
 * processes, each from its own 127.0.0.x address), publishing changes at a schedule, collecting latency histograms,
 * and saving results. Every process started here is stopped by `cleanup()`.
 */
import { fork, spawn, type ChildProcess } from 'node:child_process'
import { closeSync, openSync, readFileSync, writeFileSync, mkdirSync, mkdtempSync } from 'node:fs'
import { cpus, totalmem, tmpdir } from 'node:os'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Redis } from 'ioredis'
import pg from 'pg'
import hdr from 'hdr-histogram-js'
import { wrap } from '../../lib/route/envelope.js'
import { encodeNotification } from '../../lib/protocol/index.js'
import { writeReport } from './report.js'

export const here = fileURLToPath(new URL('.', import.meta.url))
export const root = join(here, '..', '..', '..')
export const resultsDir = join(root, 'test', 'bench', 'results')
export const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'
export const PG_ADMIN = process.env.PG_ADMIN_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
export const started: ChildProcess[] = []

export const sleep = async (ms: number): Promise<void> => await new Promise((resolve) => setTimeout(resolve, ms))
export const log = (...args: unknown[]): void => { process.stderr.write(args.join(' ') + '\n') }

export function rssMiB (pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8')
  return Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024
}

export async function freePort (): Promise<number> {
  const { createServer } = await import('node:net')
  return await new Promise((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => { const p = (s.address() as { port: number }).port; s.close(() => resolve(p)) })
  })
}

/**
 * A server under test: our standalone server, ours mounted by a host that publishes (`host`, with `label` naming its
 * bus), the raw ws broadcast, or Socket.IO with its Redis adapter.
 */
export interface Target { kind: 'changefeed' | 'host' | 'ws' | 'socketio', label: string, url: string, pid: number, stop: (graceMs?: number) => Promise<void> }

/** SIGTERM, then SIGKILL if the process is still there after `graceMs` (a draining server needs its drain time). */
export async function stopChild (child: ChildProcess, graceMs = 10_000): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise((resolve) => child.once('exit', resolve))
  child.kill('SIGTERM')
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs)
  await exited
  clearTimeout(timer)
}

/**
 * Our standalone server from a config, on `port` (a free one when not given); resolves when it answers
 * /health/live (`/health/ready` with `ready`: listening, and its bus and database reached).
 */
export async function startChangefeed (config: object, env: NodeJS.ProcessEnv = {}, port?: number, ready = false): Promise<Target> {
  const dir = mkdtempSync(join(tmpdir(), 'changefeed-bench-'))
  const file = join(dir, 'changefeed.json')
  writeFileSync(file, JSON.stringify(config))
  port ??= await freePort()
  // BENCH_LOG_DIR: each instance's warnings to <dir>/changefeed-<port>.log (else nowhere)
  const logDir = process.env.BENCH_LOG_DIR
  const out = logDir === undefined ? 'ignore' : openSync(join(logDir, `changefeed-${port}.log`), 'a')
  const child = spawn(process.execPath, [join(root, 'bin', 'serve'), '--config', file, '--port', String(port)], {
    env: { ...process.env, LOG_LEVEL: 'warn', ...env }, stdio: ['ignore', out, 'inherit']
  })
  if (typeof out === 'number') closeSync(out)
  started.push(child)
  const deadline = Date.now() + 30_000
  for (;;) {
    if (child.exitCode !== null) throw new Error(`server exited with ${child.exitCode}`)
    if (Date.now() > deadline) throw new Error('server did not start within 30 s')
    if (await fetch(`http://127.0.0.1:${port}/health/${ready ? 'ready' : 'live'}`).then((r) => r.ok, () => false)) break
    await sleep(100)
  }
  return { kind: 'changefeed', label: 'changefeed', url: `ws://127.0.0.1:${port}/ws`, pid: child.pid!, stop: async (graceMs) => await stopChild(child, graceMs) }
}

export async function startPeer (kind: 'ws' | 'socketio', channel: string): Promise<Target> {
  const port = await freePort()
  const child = fork(join(here, 'peers', kind === 'ws' ? 'raw-ws.js' : 'socketio.js'), [], {
    env: { ...process.env, PORT: String(port), BENCH_CHANNEL: channel, REDIS_URL }, stdio: ['ignore', 'ignore', 'inherit', 'ipc']
  })
  started.push(child)
  await new Promise((resolve) => child.once('message', resolve))
  return { kind, label: kind, url: kind === 'ws' ? `ws://127.0.0.1:${port}` : `http://127.0.0.1:${port}`, pid: child.pid!, stop: async () => await stopChild(child) }
}

export type HostBus = 'memory' | 'redis' | 'redis-cluster' | 'nats'

/** The plugin mounted in a host app that publishes each change it gets from Redis (peers/changefeed-host.ts). */
export async function startHost (bus: HostBus, busUrl?: string): Promise<Target> {
  const port = await freePort()
  const child = fork(join(here, 'peers', 'changefeed-host.js'), [], {
    env: { ...process.env, PORT: String(port), BENCH_CHANNEL: 'bench:host', BENCH_BUS: bus, BENCH_BUS_URL: busUrl ?? '', REDIS_URL },
    stdio: ['ignore', 'ignore', 'inherit', 'ipc']
  })
  started.push(child)
  await new Promise((resolve) => child.once('message', resolve))
  return { kind: 'host', label: `changefeed-${bus}`, url: `ws://127.0.0.1:${port}/ws`, pid: child.pid!, stop: async () => await stopChild(child) }
}

export interface LoadReport { received: number, bytes: number, connected: number, failed: number, histogram: string }
export interface Load { children: ChildProcess[], connected: number, failed: number, seconds: number }

/** Spreads `count` connections over `processes` load generators, each from its own 127.0.0.x address. */
export async function startLoad (targets: Target[], count: number, processes: number, entities: string[], entityType: string, clock: 'payload' | 'trigger', concurrency = 200): Promise<Load> {
  const t0 = Date.now()
  const children: ChildProcess[] = []
  const readies: Array<Promise<{ connected: number, failed: number }>> = []
  for (let i = 0; i < processes; i++) {
    const target = targets[i % targets.length]
    const share = Math.floor(count / processes) + (i < count % processes ? 1 : 0)
    const job = { target: target.kind, url: target.url, count: share, entities, entityType, localAddress: `127.0.0.${2 + i}`, clock, concurrency }
    const child = fork(join(here, 'loadgen.js'), [], { env: { ...process.env, BENCH_JOB: JSON.stringify(job) }, stdio: ['ignore', 'ignore', 'inherit', 'ipc'] })
    started.push(child)
    children.push(child)
    readies.push(new Promise((resolve) => child.once('message', (m) => resolve(m as { connected: number, failed: number }))))
  }
  const ready = await Promise.all(readies)
  return { children, connected: ready.reduce((a, r) => a + r.connected, 0), failed: ready.reduce((a, r) => a + r.failed, 0), seconds: (Date.now() - t0) / 1000 }
}

export async function ask<T> (children: ChildProcess[], command: string): Promise<T[]> {
  return await Promise.all(children.map(async (c) => await new Promise<T>((resolve) => { c.once('message', (m) => resolve(m as T)); c.send(command) })))
}

export interface Latency { count: number, p50: number, p90: number, p99: number, max: number }

/** CPU time (user + system) a process has used so far, in ms (Linux: /proc/<pid>/stat, in clock ticks of 10 ms). */
export function cpuMs (pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /s, '').split(' ')
  // after "pid (comm) ": state is field 3; utime and stime are fields 14 and 15
  return (Number(fields[11]) + Number(fields[12])) * 10
}

/**
 * Waits until the machine is quiet: the previous target's ten thousand sockets take the kernel and the stopped
 * processes a few seconds to clear, and whichever target runs next would pay for them (at most `maxMs`).
 */
export async function quiet (maxMs = 20_000): Promise<void> {
  const busy = (): [number, number] => {
    const [, ...fields] = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/)
    const ticks = fields.map(Number)
    return [ticks.reduce((a, b) => a + b, 0), ticks[3] + ticks[4]]
  }
  const deadline = Date.now() + maxMs
  while (Date.now() < deadline) {
    const [total0, idle0] = busy()
    await sleep(1000)
    const [total1, idle1] = busy()
    if ((idle1 - idle0) / Math.max(1, total1 - total0) > 0.85) return
  }
}

/** Received count and merged latency (ms) of every load generator; resets them for the next step. */
export async function collect (load: Load): Promise<Latency & { bytes: number }> {
  const reports = await ask<LoadReport>(load.children, 'report')
  const merged = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: 3 })
  for (const r of reports) merged.add(hdr.decodeFromCompressedBase64(r.histogram))
  await ask(load.children, 'reset')
  const ms = (micros: number): number => Math.round(micros / 10) / 100
  return { count: reports.reduce((a, r) => a + r.received, 0), bytes: reports.reduce((a, r) => a + (r.bytes ?? 0), 0), p50: ms(merged.getValueAtPercentile(50)), p90: ms(merged.getValueAtPercentile(90)), p99: ms(merged.getValueAtPercentile(99)), max: ms(merged.maxValue) }
}

export async function stopLoad (load: Load): Promise<void> {
  for (const c of load.children) c.send('close')
  await Promise.all(load.children.map(async (c) => await new Promise((resolve) => { if (c.exitCode !== null) resolve(null); else c.once('exit', resolve) })))
}

/**
 * The same change for each target, in the form each expects on Redis. Raw ws gets the notification frame a host's
 * publish makes, position included, so both put the same bytes on the wire and the clients read the same frames.
 */
export function messageFor (target: Target['kind'], prefix: string, entityId: string, t: number, seq: number): [string, string] {
  const payload = { t, seq, homeScore: seq % 50, awayScore: 7, period: 'Second Half' }
  if (target === 'host') return ['bench:host', JSON.stringify({ entityId, payload })]
  const fields = { entityType: 'Match', entityId, changeType: 'updated', payloadType: 'full', ts: Math.floor(t), payload } as const
  if (target === 'changefeed') return [`${prefix}:Match:${entityId}`, wrap({ ts: Math.floor(t), payloadType: 'full', frame: encodeNotification(fields) })]
  if (target === 'ws') return ['bench:raw', JSON.stringify({ entityId, frame: encodeNotification({ ...fields, position: `p:${'0'.repeat(8)}:${seq + 1}` }) })]
  return ['bench:socketio', JSON.stringify({ entityId, payload })]
}

/** Publishes at `rate` per second for `seconds`, each message stamped with its scheduled time (not its send time). */
export async function publishAt (redis: Redis, rate: number, seconds: number, make: (t: number, seq: number) => [string, string]): Promise<number> {
  const start = performance.timeOrigin + performance.now() + 50
  const total = Math.round(rate * seconds)
  for (let seq = 0; seq < total; seq++) {
    const due = start + (seq * 1000) / rate
    const wait = due - (performance.timeOrigin + performance.now())
    if (wait > 1) await sleep(wait)
    const [channel, message] = make(due, seq)
    void redis.publish(channel, message)
  }
  return total
}

export const machine = (): object => ({ cpus: cpus().length, cpuModel: cpus()[0]?.model, memoryGiB: Math.round(totalmem() / 2 ** 30), node: process.version, date: new Date().toISOString() })

export function save (name: string, result: object): void {
  mkdirSync(resultsDir, { recursive: true })
  writeFileSync(join(resultsDir, `${name}.json`), JSON.stringify({ scenario: name, machine: machine(), ...result }, null, 2) + '\n')
  writeReport(resultsDir)
  log(`wrote test/bench/results/${name}.json and test/bench/REPORT.md`)
}

export async function freshDatabase (name: string): Promise<string> {
  const admin = new pg.Client({ connectionString: PG_ADMIN })
  await admin.connect()
  await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
  await admin.query(`CREATE DATABASE ${name} TEMPLATE template0`)
  await admin.end()
  return PG_ADMIN.replace(/\/[^/]*$/, `/${name}`)
}

export const MARTEN = (table: string): string => `CREATE TABLE ${table} (id varchar PRIMARY KEY, data jsonb NOT NULL, mt_last_modified timestamptz DEFAULT now(),
  mt_version uuid NOT NULL DEFAULT gen_random_uuid(), mt_dotnet_type varchar, mt_deleted boolean DEFAULT false)`

/** Transactions of `database` so far (pg_stat_database; a backend's counts arrive when it idles or ends). */
export async function transactions (sql: pg.Client, database: string): Promise<number> {
  const { rows: [row] } = await sql.query('SELECT xact_commit + xact_rollback AS n FROM pg_stat_database WHERE datname = $1', [database])
  return Number(row.n)
}

/** A server's HTTP base (its /metrics, /health) from its socket URL. */
export const httpOf = (t: Target): string => t.url.replace('ws', 'http').replace(/\/ws$/, '')

export async function metric (httpBase: string, name: string, labels = ''): Promise<number> {
  const text = await (await fetch(httpBase + '/metrics')).text()
  return text.split('\n').filter((l) => l.startsWith(name) && l.includes(labels)).reduce((a, l) => a + Number(l.split(' ').pop()), 0)
}

/** Stops every process a scenario started. */
export function cleanup (): void {
  for (const c of started) if (c.exitCode === null) c.kill('SIGKILL')
}
