/**
 * Fan-out at the physical limit, side by side in one run, in interleaved rounds (this machine is noisy; each round
 * runs the targets in a rotated order, and the report takes medians and ratios):
 *   memory   idle server RSS per socket, at 1 and at 1,000 entities: raw ws, ours on the memory and the Redis bus, Socket.IO
 *   fanout   one hot entity, 10K sockets, 2, 5 and 10 changes/s: the same four
 *   storm    10K sockets opening and subscribing at once over 1,000 entities (an instance restart): memory, Redis, NATS bus
 *   cluster  one hot entity and 1,000 warm ones on a three-master Redis Cluster (sharded pub/sub) against one Redis
 * Ours runs as a host mounts it: the host gets each change from Redis and calls `app.changefeed.publish()`.
 */
import { spawn } from 'node:child_process'
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Redis } from 'ioredis'
import {
  REDIS_URL, collect, cpuMs, freePort, log, messageFor, publishAt, quiet, rssMiB, save, sleep, started, startHost, startLoad, startPeer, stopLoad,
  type HostBus, type Target
} from './harness.js'

const SOCKETS = Number(process.env.BENCH_SOCKETS ?? 10_000)
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3)
const NATS_URL = process.env.NATS_URL ?? 'nats://127.0.0.1:4222'

type Peer = 'ws' | 'socketio' | HostBus

async function start (peer: Peer, busUrl?: string): Promise<Target> {
  if (peer === 'ws') return await startPeer('ws', 'bench:raw')
  if (peer === 'socketio') return await startPeer('socketio', 'bench:socketio')
  return await startHost(peer, busUrl ?? (peer === 'nats' ? NATS_URL : peer === 'redis' ? REDIS_URL : undefined))
}

/** The targets in a different order each round, so no target always runs first (or last) on a warm machine. */
function rotated<T> (items: T[], round: number): T[] {
  return items.map((_, i) => items[(i + round) % items.length])
}

const entitiesOf = (n: number): string[] => Array.from({ length: n }, (_, i) => n === 1 ? 'hot' : `m-${i}`)

/** Memory per idle socket at 1 and 1,000 entities. */
async function memory (): Promise<void> {
  const rows: object[] = []
  const peers: Peer[] = ['ws', 'memory', 'redis', 'socketio']
  for (let round = 0; round < ROUNDS; round++) {
    for (const entities of [1, 1000]) {
      for (const peer of rotated(peers, round)) {
        const target = await start(peer)
        await sleep(2000)
        const before = rssMiB(target.pid)
        const load = await startLoad([target], SOCKETS, 2, entitiesOf(entities), 'Match', 'payload')
        await sleep(5000)
        const after = rssMiB(target.pid)
        const row = { round, target: target.label, entities, sockets: load.connected, kibPerConnection: Math.round(((after - before) * 1024) / load.connected * 100) / 100 }
        log(JSON.stringify(row))
        rows.push(row)
        await stopLoad(load)
        await target.stop()
      }
    }
  }
  save('memory', { description: `${SOCKETS} idle sockets subscribed to 1 or to 1,000 entities; server RSS growth per socket; ${ROUNDS} interleaved rounds`, rows })
}

/** One hot entity watched by every socket, at 2, 5 and 10 changes/s. */
async function fanout (): Promise<void> {
  await hot('fanout', [2, 5, 10], ['ws', 'memory', 'redis', 'socketio'])
}

/** Saturation alone: 10 changes/s (100,000 deliveries/s), ours on both buses against raw ws. */
async function saturation (): Promise<void> {
  await hot('saturation', [10], ['ws', 'memory', 'redis'])
}

async function hot (name: string, rates: number[], peers: Peer[]): Promise<void> {
  const seconds = 5
  const redis = new Redis(REDIS_URL)
  const rows: object[] = []
  for (let round = 0; round < ROUNDS; round++) {
    for (const peer of rotated(peers, round)) {
      await quiet()
      const target = await start(peer)
      const load = await startLoad([target], SOCKETS, 2, ['hot'], 'Match', 'payload')
      await sleep(1500)
      await collect(load)
      for (const rate of rates) {
        const cpuBefore = cpuMs(target.pid)
        const sent = await publishAt(redis, rate, seconds, (t, seq) => messageFor(target.kind, '', 'hot', t, seq))
        await sleep(1500)
        // the server's CPU for the step (user + system, in 10 ms ticks), per delivery: what delivering one costs
        const cpuUsPerDelivery = Math.round((cpuMs(target.pid) - cpuBefore) * 1000 / Math.max(1, sent * load.connected) * 100) / 100
        const lat = await collect(load)
        const row = { round, target: target.label, rate, sockets: load.connected, expected: sent * load.connected, delivered: lat.count, deliveredPerSecond: Math.round(lat.count / seconds), cpuUsPerDelivery, ...lat }
        log(JSON.stringify(row))
        rows.push(row)
      }
      await stopLoad(load)
      await target.stop()
    }
  }
  redis.disconnect()
  save(name, { description: `${SOCKETS} sockets on one entity; each change arrives on Redis and goes to every watcher; ${seconds} s per rate; ${ROUNDS} interleaved rounds, each target started on a quiet machine`, rows })
}

/** 10K sockets opening and subscribing at once over 1,000 entities, as after an instance restart. */
async function storm (): Promise<void> {
  const rows: object[] = []
  const peers: Peer[] = ['memory', 'redis', 'nats']
  for (let round = 0; round < ROUNDS; round++) {
    for (const peer of rotated(peers, round)) {
      const target = await start(peer)
      await sleep(1000)
      const load = await startLoad([target], SOCKETS, 4, entitiesOf(1000), 'Match', 'payload', 2000)
      const row = { round, target: target.label, sockets: load.connected, failed: load.failed, seconds: Math.round(load.seconds * 100) / 100 }
      log(JSON.stringify(row))
      rows.push(row)
      await stopLoad(load)
      await target.stop()
    }
  }
  save('storm', { description: `${SOCKETS} sockets opening at once (2,000 at a time per load process, 4 processes), each subscribing to one of 1,000 entities; seconds until every subscription is confirmed; ${ROUNDS} interleaved rounds`, rows })
}

/** A three-master Redis Cluster on free ports; returns its nodes' URLs, comma-separated. */
async function redisCluster (): Promise<string> {
  const urls: string[] = []
  for (let i = 0; i < 3; i++) {
    const port = await freePort()
    const dir = mkdtempSync(join(tmpdir(), 'changefeed-bench-cluster-'))
    started.push(spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--cluster-enabled', 'yes',
      '--cluster-config-file', join(dir, 'nodes.conf'), '--dir', dir], { stdio: 'ignore' }))
    urls.push(`127.0.0.1:${port}`)
  }
  await sleep(1000)
  await new Promise<void>((resolve, reject) => {
    spawn('redis-cli', ['--cluster', 'create', ...urls, '--cluster-replicas', '0', '--cluster-yes'], { stdio: 'ignore' })
      .once('exit', (code) => code === 0 ? resolve() : reject(new Error(`redis-cli --cluster create exited with ${code}`)))
  })
  await sleep(3000)
  return urls.map((u) => `redis://${u}`).join(',')
}

/** Fan-out through one Redis and through a Redis Cluster: one hot entity, and changes spread over 1,000 entities. */
async function cluster (): Promise<void> {
  const clusterUrl = await redisCluster()
  const redis = new Redis(REDIS_URL)
  const rows: object[] = []
  const seconds = 5
  const steps = [{ entities: 1, rate: 5 }, { entities: 1000, rate: 200 }]
  for (let round = 0; round < ROUNDS; round++) {
    for (const peer of rotated<Peer>(['redis', 'redis-cluster'], round)) {
      for (const { entities, rate } of steps) {
        const target = await start(peer, peer === 'redis-cluster' ? clusterUrl : REDIS_URL)
        const ids = entitiesOf(entities)
        const load = await startLoad([target], SOCKETS, 2, ids, 'Match', 'payload')
        await sleep(1500)
        await collect(load)
        const sent = await publishAt(redis, rate, seconds, (t, seq) => messageFor(target.kind, '', ids[seq % ids.length], t, seq))
        await sleep(1500)
        const lat = await collect(load)
        const row = { round, target: target.label, entities, rate, sockets: load.connected, expected: Math.round(sent * load.connected / entities), delivered: lat.count, ...lat }
        log(JSON.stringify(row))
        rows.push(row)
        await stopLoad(load)
        await target.stop()
      }
    }
  }
  redis.disconnect()
  save('cluster', { description: `${SOCKETS} sockets; one Redis against a three-master Redis Cluster (sharded pub/sub): one hot entity at 5 changes/s, and 200 changes/s spread over 1,000 entities; ${ROUNDS} interleaved rounds`, rows })
}

export const scaleScenarios: Record<string, () => Promise<void>> = { memory, fanout, saturation, storm, cluster }
