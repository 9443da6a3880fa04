/**
 * S8, filtered feeds: the server's cost of delivering one change of a type to its watchers on this instance, with
 * 1, 1,000 and 10,000 different filters on the type (one socket each, `{"teamId": …}`), against the same change
 * to an unfiltered feed. In process, without sockets: the change arrives as the bus hands it over (the Fanout's
 * message handler) and each watcher only counts its frames, so what is measured is the routing: parse once, look
 * the groups up, tag a frame per group that hears of it. Interleaved rounds; the ratio is to the unfiltered feed.
 */
import { performance } from 'node:perf_hooks'
import pino from 'pino'
import { Fanout, type Receiver } from '../../lib/ws/fanout.js'
import { Filters } from '../../lib/ws/filters.js'
import { EntityRegistry } from '../../lib/entities.js'
import { resolveOptions } from '../../lib/options.js'
import { Visibility, type SnapshotReader } from '../../lib/reads/snapshot.js'
import { wrap } from '../../lib/route/envelope.js'
import { conditionsOf, encodeNotification, filterIdOf, subscriptionIdOf } from '../../lib/protocol/index.js'
import { log, save } from './harness.js'

const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3)
const CHANGES = 20_000
const TEAMS = 10_000
const CHANNEL = 'cf:Player:*'

class Counter implements Receiver {
  frames = 0
  deliver (): boolean {
    this.frames++
    return true
  }
}

/** A player document of about a kilobyte. */
const player = (i: number, teamId: string): object => ({
  id: `p-${i}`,
  name: `Player ${i}`,
  teamId,
  position: ['wing', 'centre', 'prop', 'lock'][i % 4],
  number: i % 23,
  stats: { tries: i % 7, tackles: i % 31, metres: i * 3, minutes: 80 },
  bio: 'x'.repeat(800)
})

/** One setup: an unfiltered feed socket, or `filters` different filters with one socket each. */
async function setup (filters: number | 'unfiltered'): Promise<{ fanout: Fanout, watchers: Counter[] }> {
  const options = resolveOptions({ entities: { Player: { access: 'public', payload: 'full', feed: true } } })
  const fanout = new Fanout('cf', new EntityRegistry(options), pino({ level: 'silent' }))
  const watchers: Counter[] = []
  if (filters === 'unfiltered') {
    const w = new Counter()
    watchers.push(w)
    await fanout.watch(w, CHANNEL, 'Player', '*', null)
    return { fanout, watchers }
  }
  const reader = { matching: async () => ({ entities: [], visibility: new Visibility('1:1:') }) } as unknown as SnapshotReader
  const index = new Filters(fanout, reader, { maxFiltersPerType: 20_000, maxFilterMatches: 1000, maxFiltersPerConnection: 1, maxFiltersPerIp: 20_000 })
  const entity = new EntityRegistry(options).get('Player')
  if (entity === undefined) throw new Error('no Player')
  for (let i = 0; i < filters; i++) {
    const w = new Counter()
    watchers.push(w)
    const where = { teamId: `team-${i}` }
    const { start } = await index.join(w, { entity, tenantId: null, feedChannel: CHANNEL, subscriptionId: subscriptionIdOf('Player', filterIdOf(where)), conditions: conditionsOf(where), snapshot: false, holder: { id: i, ip: '10.0.0.1' } })
    start()
  }
  return { fanout, watchers }
}

/** The bus messages of CHANGES changes: players moving between teams, so filters see entered, updated and left. */
function messages (): string[] {
  return Array.from({ length: CHANGES }, (_, i) => {
    const frame = encodeNotification({ entityType: 'Player', entityId: `p-${i % 500}`, changeType: 'updated', payloadType: 'full', ts: Date.now(), payload: player(i % 500, `team-${(i * 7919) % TEAMS}`) })
    return wrap({ ts: Date.now(), payloadType: 'full', position: `n:${i}`, tenantId: null, frame, txid: String(1000 + i) })
  })
}

async function s8 (): Promise<void> {
  const configs = ['unfiltered', 1, 1000, 10_000] as const
  const input = messages()
  const samples: Record<string, number[]> = {}
  const frames: Record<string, number> = {}
  for (let round = 0; round < ROUNDS; round++) {
    // the order rotates, so no setup always runs first
    for (let k = 0; k < configs.length; k++) {
      const config = configs[(k + round) % configs.length]
      const { fanout, watchers } = await setup(config)
      // warm up, then measure
      for (const m of input.slice(0, 2000)) fanout.onBusMessage(CHANNEL, m)
      const before = process.cpuUsage()
      const t0 = performance.now()
      for (const m of input) fanout.onBusMessage(CHANNEL, m)
      const cpu = process.cpuUsage(before)
      const micros = (cpu.user + cpu.system) / CHANGES
      const key = String(config)
      ;(samples[key] ??= []).push(micros)
      frames[key] = watchers.reduce((n, w) => n + w.frames, 0)
      log(`round ${round + 1}: ${key}: ${micros.toFixed(2)} µs CPU per change (${(performance.now() - t0).toFixed(0)} ms wall)`)
    }
  }
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]
  const base = samples.unfiltered
  const rows = configs.map((config) => {
    const key = String(config)
    const ratios = samples[key].map((v, i) => v / base[i])
    return {
      filters: config === 'unfiltered' ? 'unfiltered feed' : config.toLocaleString('en'),
      cpuMicrosPerChange: Number(median(samples[key]).toFixed(2)),
      range: `${Math.min(...samples[key]).toFixed(2)}–${Math.max(...samples[key]).toFixed(2)}`,
      ratio: `${median(ratios).toFixed(2)}× (${Math.min(...ratios).toFixed(2)}–${Math.max(...ratios).toFixed(2)})`,
      framesPerChange: Number((frames[key] / (CHANGES + 2000)).toFixed(2))
    }
  })
  save('s8', { description: `${CHANGES.toLocaleString('en')} changes of 500 players (documents of about 1 KB) moving between ${TEAMS.toLocaleString('en')} teams, delivered in process to a type's unfiltered feed or to 1, 1,000 and 10,000 filters \`{"teamId": …}\` with one watcher each; ${ROUNDS} interleaved rounds, server CPU per change, ratios to the unfiltered feed paired by round`, rows })
}

export const filterScenarios = { s8 }
