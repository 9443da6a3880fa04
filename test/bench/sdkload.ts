/**
 * Whole clients over several processes (sdkgen.ts): each process holds at most `perProcess` of them, so ten thousand
 * clients spread over a few processes (each within its open-file limit), and their CPU over the cores, rather than
 * one process's event loop deciding what is measured.
 */
import { fork, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import hdr from 'hdr-histogram-js'
import { here, log, sleep, started } from './harness.js'
import type { SdkJob, SdkReport } from './sdkgen.js'

export interface SdkLoad { children: ChildProcess[], clients: number }

/** Waits for the first message of `child` that has `key`. */
async function reply<T> (child: ChildProcess, key: string): Promise<T> {
  return await new Promise((resolve) => {
    const listener = (m: Record<string, unknown>): void => {
      if (!(key in m)) return
      child.off('message', listener)
      resolve(m as T)
    }
    child.on('message', listener)
  })
}

/**
 * Starts `count` clients of `job` over ceil(count / perProcess) processes; resolves once every client's first
 * subscribe is answered (or after `timeoutMs`, saying how many were).
 */
export async function startSdkLoad (job: Omit<SdkJob, 'count' | 'first'>, count: number, perProcess = 2500, timeoutMs = 180_000): Promise<SdkLoad> {
  const processes = Math.max(1, Math.ceil(count / perProcess))
  const children: ChildProcess[] = []
  let first = 0
  for (let i = 0; i < processes; i++) {
    const share = Math.floor(count / processes) + (i < count % processes ? 1 : 0)
    const child = fork(join(here, 'sdkgen.js'), [], { env: { ...process.env, BENCH_JOB: JSON.stringify({ ...job, count: share, first }) }, stdio: ['ignore', 'ignore', 'inherit', 'ipc'] })
    first += share
    started.push(child)
    children.push(child)
  }
  const ready = Promise.all(children.map(async (c) => await reply(c, 'ready')))
  const t0 = Date.now()
  const done = await Promise.race([ready.then(() => true), sleep(timeoutMs).then(() => false)])
  const load = { children, clients: count }
  if (!done) log(`sdk load: ${await subscribed(load)} of ${count} subscribed after ${timeoutMs / 1000} s`)
  else log(`sdk load: ${count} clients subscribed in ${((Date.now() - t0) / 1000).toFixed(1)} s over ${processes} processes`)
  return load
}

async function status (load: SdkLoad): Promise<Array<{ subscribed: number, pending: number }>> {
  return await Promise.all(load.children.map(async (c) => { const r = reply<{ subscribed: number, pending: number }>(c, 'pending'); c.send('status'); return await r }))
}

/** Clients whose first subscribe was answered. */
export async function subscribed (load: SdkLoad): Promise<number> {
  return (await status(load)).reduce((a, s) => a + s.subscribed, 0)
}

/** Clients whose socket closed and whose resume is not answered yet. */
export async function pending (load: SdkLoad): Promise<number> {
  return (await status(load)).reduce((a, s) => a + s.pending, 0)
}

export function tell (load: SdkLoad, message: object | string): void {
  for (const c of load.children) if (c.connected) c.send(message)
}

export async function stopCuts (load: SdkLoad): Promise<void> {
  await Promise.all(load.children.map(async (c) => { const r = reply(c, 'stopped'); c.send('stop'); return await r }))
}

interface Percentiles { count: number, p50: number, p95: number, p99: number, max: number }
export interface SdkTotals extends Omit<SdkReport, 'replay' | 'resumed' | 'resumedRecovered'> { replay: Percentiles, resumed: Percentiles, resumedRecovered: Percentiles }

/** Every process's count against what was written (changes 1..n per entity), summed; latencies merged. */
export async function finishSdkLoad (load: SdkLoad, written: Record<string, number>, middleUpTo = Infinity): Promise<SdkTotals> {
  const reports = await Promise.all(load.children.map(async (c) => { const r = reply<SdkReport>(c, 'clients'); c.send({ finish: written, middleUpTo }); return await r }))
  const merged = (key: 'replay' | 'resumed' | 'resumedRecovered'): Percentiles => {
    const h = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: 3_600_000, numberOfSignificantValueDigits: 3 })
    for (const r of reports) h.add(hdr.decodeFromCompressedBase64(r[key]))
    return { count: h.totalCount, p50: h.getValueAtPercentile(50), p95: h.getValueAtPercentile(95), p99: h.getValueAtPercentile(99), max: h.maxValue }
  }
  const sum = (key: keyof SdkReport): number => reports.reduce((a, r) => a + Number(r[key]), 0)
  const tally = (key: 'closes' | 'resyncFrames' | 'errorFrames' | 'awayStates' | 'drops'): Record<string, number> => {
    const out: Record<string, number> = {}
    for (const r of reports) for (const [k, n] of Object.entries(r[key])) out[k] = (out[k] ?? 0) + n
    return out
  }
  for (const c of load.children) c.send('close')
  await Promise.all(load.children.map(async (c) => await new Promise((resolve) => { if (c.exitCode !== null) resolve(null); else c.once('exit', resolve) })))
  return {
    clients: sum('clients'),
    subscribed: sum('subscribed'),
    delivered: sum('delivered'),
    expected: sum('expected'),
    missed: sum('missed'),
    missedSilently: sum('missedSilently'),
    missedInMiddle: sum('missedInMiddle'),
    missedWhileAway: sum('missedWhileAway'),
    away: sum('away'),
    duplicates: sum('duplicates'),
    resyncs: sum('resyncs'),
    recovered: sum('recovered'),
    notRecovered: sum('notRecovered'),
    fresh: sum('fresh'),
    closes: tally('closes'),
    resyncFrames: tally('resyncFrames'),
    errorFrames: tally('errorFrames'),
    awayStates: tally('awayStates'),
    drops: tally('drops'),
    replay: merged('replay'),
    resumed: merged('resumed'),
    resumedRecovered: merged('resumedRecovered')
  }
}
