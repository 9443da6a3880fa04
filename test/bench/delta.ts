/**
 * S7, `full` against `delta` payloads, side by side in one run: one server, two entity types on two tables with the
 * same live match document (the demo's game state with both line-ups and their player statistics, about 3 KB),
 * `BENCH_DELTA_SOCKETS` sockets on each. Changes of three kinds go through PostgreSQL (score, clock tick, a player's
 * statistic), one kind and one payload mode at a time, in interleaved rounds (the order rotates); measured: bytes
 * of notification frames per delivered change, and the server's CPU time per delivered change.
 */
import pg from 'pg'
import { MARTEN, collect, cpuMs, freshDatabase, log, save, sleep, startChangefeed, startLoad, stopLoad, type Load } from './harness.js'

const SOCKETS = Number(process.env.BENCH_DELTA_SOCKETS ?? 2000)
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3)
const CHANGES = 40
const RATE = 10

interface Player { number: number, name: string, tries: number, tackles: number, metres: number, minutes: number }
interface Match {
  id: string
  homeTeam: { id: string, name: string, players: Player[] }
  awayTeam: { id: string, name: string, players: Player[] }
  homeScore: number
  awayScore: number
  minute: number
  period: string
  lastEvent: string | null
  venue: string
}

const lineup = (team: string): Player[] => Array.from({ length: 15 }, (_, i) => ({ number: i + 1, name: `${team} ${i + 1}`, tries: 0, tackles: 0, metres: 0, minutes: 0 }))

function initial (): Match {
  return {
    id: 'match-1',
    homeTeam: { id: 'team-1', name: 'Harbour Sharks', players: lineup('Sharks') },
    awayTeam: { id: 'team-2', name: 'Valley Rams', players: lineup('Rams') },
    homeScore: 0,
    awayScore: 0,
    minute: 0,
    period: 'First Half',
    lastEvent: 'Kick-off',
    venue: 'North Oval'
  }
}

/** The three kinds of change of a live match. */
const KINDS: Record<string, (m: Match, i: number) => Match> = {
  score: (m, i) => ({ ...m, homeScore: m.homeScore + 5, lastEvent: `Try (home) ${i}` }),
  clock: (m) => ({ ...m, minute: m.minute + 1 }),
  stat: (m, i) => {
    const players = m.homeTeam.players.map((p, n) => n === i % 15 ? { ...p, tackles: p.tackles + 1 } : p)
    return { ...m, homeTeam: { ...m.homeTeam, players } }
  }
}

const TABLES = { full: 'mt_doc_matchfull', delta: 'mt_doc_matchdelta' } as const
type Mode = keyof typeof TABLES

async function s7 (): Promise<void> {
  const url = await freshDatabase('changefeed_bench_s7')
  const db = new pg.Client({ connectionString: url })
  await db.connect()
  let document = initial()
  for (const table of Object.values(TABLES)) {
    await db.query(MARTEN(table))
    await db.query(`INSERT INTO ${table} (id, data) VALUES ('match-1', $1)`, [JSON.stringify(document)])
  }
  const target = await startChangefeed({
    server: { port: 0 },
    databases: [{ name: 'main', url }],
    entities: { MatchFull: { access: 'public', payload: 'full' }, MatchDelta: { access: 'public', payload: 'delta' } },
    limits: { maxConnectionsPerIp: 100_000 }
  })
  const loads: Record<Mode, Load> = {
    full: await startLoad([target], SOCKETS, 1, ['match-1'], 'MatchFull', 'trigger'),
    delta: await startLoad([target], SOCKETS, 1, ['match-1'], 'MatchDelta', 'trigger')
  }
  log(`s7: ${loads.full.connected} + ${loads.delta.connected} sockets`)
  const write = async (mode: Mode, data: Match): Promise<void> => {
    await db.query(`UPDATE ${TABLES[mode]} SET data = $1, mt_version = gen_random_uuid() WHERE id = 'match-1'`, [JSON.stringify(data)])
  }
  // every socket's first notification of a delta type is full: one change each before measuring
  for (const mode of ['full', 'delta'] as const) await write(mode, document)
  await sleep(2000)
  const rows: Array<Record<string, unknown>> = []
  const modes: Mode[] = ['full', 'delta']
  for (let round = 0; round < ROUNDS; round++) {
    for (const kind of Object.keys(KINDS)) {
      const before = document
      for (const mode of round % 2 === 0 ? modes : [...modes].reverse()) {
        document = before
        await collect(loads[mode])
        const cpuBefore = cpuMs(target.pid)
        const start = Date.now()
        for (let i = 0; i < CHANGES; i++) {
          const due = start + (i * 1000) / RATE
          if (due > Date.now()) await sleep(due - Date.now())
          document = KINDS[kind](document, i)
          await write(mode, document)
        }
        await sleep(1500)
        const cpu = cpuMs(target.pid) - cpuBefore
        const got = await collect(loads[mode])
        const row = {
          round,
          kind,
          mode,
          documentBytes: Buffer.byteLength(JSON.stringify(document)),
          delivered: got.count,
          expected: CHANGES * loads[mode].connected,
          bytesPerChange: Math.round(got.bytes / Math.max(1, got.count)),
          cpuMicrosPerDelivery: Math.round((cpu * 1000) / Math.max(1, got.count) * 10) / 10,
          p50: got.p50,
          p99: got.p99
        }
        log(JSON.stringify(row))
        rows.push(row)
      }
    }
  }
  for (const load of Object.values(loads)) await stopLoad(load)
  await target.stop()
  await db.end()
  const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]
  const ratios = (kind: string): { median: number, min: number, max: number } => {
    const cpu = (round: number, mode: Mode): number => rows.find((r) => r.round === round && r.kind === kind && r.mode === mode)?.cpuMicrosPerDelivery as number
    const values = Array.from({ length: ROUNDS }, (_, round) => cpu(round, 'delta') / cpu(round, 'full'))
    return { median: median(values), min: Math.min(...values), max: Math.max(...values) }
  }
  const summary = Object.keys(KINDS).map((kind) => {
    const of = (mode: Mode, key: string): number => median(rows.filter((r) => r.kind === kind && r.mode === mode).map((r) => r[key] as number))
    return {
      kind,
      documentBytes: of('full', 'documentBytes'),
      fullBytes: of('full', 'bytesPerChange'),
      deltaBytes: of('delta', 'bytesPerChange'),
      bytesRatio: Math.round((of('delta', 'bytesPerChange') / of('full', 'bytesPerChange')) * 1000) / 1000,
      fullCpuMicros: of('full', 'cpuMicrosPerDelivery'),
      deltaCpuMicros: of('delta', 'cpuMicrosPerDelivery'),
      // the two modes of one kind run back to back in each round: their ratio is paired
      cpuRatio: `${ratios(kind).median.toFixed(2)}× (${ratios(kind).min.toFixed(2)}–${ratios(kind).max.toFixed(2)})`
    }
  })
  for (const row of summary) log(JSON.stringify(row))
  save('s7', {
    description: `${SOCKETS} sockets on a \`full\` type and ${SOCKETS} on a \`delta\` type, the same live match document on each; ${CHANGES} changes of each kind at ${RATE}/s through PostgreSQL, per payload mode, ${ROUNDS} interleaved rounds; bytes of notification frames and server CPU per delivered change (medians)`,
    rows,
    summary
  })
}

export const deltaScenarios = { s7 }
