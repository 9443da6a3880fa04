/** Writes test/bench/REPORT.md and its SVG charts from the results JSON files. */
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'

type Row = Record<string, any>
interface Result { scenario: string, description: string, machine: Record<string, unknown>, rows: Row[] }

const COLORS: Record<string, string> = { changefeed: '#2563eb', 'changefeed-memory': '#2563eb', 'changefeed-redis': '#1d4ed8', 'changefeed-nats': '#60a5fa', 'changefeed-redis-cluster': '#7c3aed', ws: '#64748b', socketio: '#f59e0b' }
const LABELS: Record<string, string> = {
  changefeed: 'fastify-changefeed',
  'changefeed-memory': 'fastify-changefeed, memory bus',
  'changefeed-redis': 'fastify-changefeed, Redis bus',
  'changefeed-nats': 'fastify-changefeed, NATS bus',
  'changefeed-redis-cluster': 'fastify-changefeed, Redis Cluster',
  ws: 'raw ws broadcast',
  socketio: 'Socket.IO + Redis adapter'
}

/** A grouped bar chart: one group per x value, one bar per series. */
function barChart (title: string, unit: string, groups: string[], series: string[], value: (group: string, series: string) => number): string {
  const width = 640
  const height = 320
  const left = 70
  const bottom = 60
  const top = 40
  const max = Math.max(1, ...groups.flatMap((g) => series.map((s) => value(g, s))))
  const groupWidth = (width - left - 20) / groups.length
  const barWidth = Math.min(40, (groupWidth - 20) / series.length)
  const y = (v: number): number => top + (height - top - bottom) * (1 - v / max)
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="system-ui, sans-serif" font-size="12">`,
    '<rect width="100%" height="100%" fill="#fff"/>',
    `<text x="${left}" y="20" font-size="14" font-weight="600">${title}</text>`,
    `<text x="10" y="${top - 8}" fill="#475569">${unit}</text>`
  ]
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4
    parts.push(`<line x1="${left}" x2="${width - 10}" y1="${y(v)}" y2="${y(v)}" stroke="#e2e8f0"/>`,
      `<text x="${left - 6}" y="${y(v) + 4}" text-anchor="end" fill="#475569">${v >= 1000 ? `${Math.round(v / 100) / 10}k` : v >= 10 ? Math.round(v) : Math.round(v * 10) / 10}</text>`)
  }
  groups.forEach((g, gi) => {
    const x0 = left + gi * groupWidth + (groupWidth - barWidth * series.length) / 2
    series.forEach((s, si) => {
      const v = value(g, s)
      parts.push(`<rect x="${x0 + si * barWidth}" y="${y(v)}" width="${barWidth - 4}" height="${height - bottom - y(v)}" fill="${COLORS[s] ?? '#0f172a'}"/>`)
    })
    parts.push(`<text x="${left + gi * groupWidth + groupWidth / 2}" y="${height - bottom + 16}" text-anchor="middle">${g}</text>`)
  })
  // the legend: two to a line
  const legendWidth = (width - left) / 2
  series.forEach((s, si) => {
    const x = left + (si % 2) * legendWidth
    const ly = height - 28 + Math.floor(si / 2) * 14
    parts.push(`<rect x="${x}" y="${ly - 9}" width="10" height="10" fill="${COLORS[s] ?? '#0f172a'}"/>`,
      `<text x="${x + 14}" y="${ly}">${LABELS[s] ?? s}</text>`)
  })
  parts.push('</svg>')
  return parts.join('\n')
}

function load (dir: string, name: string): Result | null {
  const file = join(dir, `${name}.json`)
  return existsSync(file) ? JSON.parse(readFileSync(file, 'utf8')) as Result : null
}

/** A cell: a list joined, a tally (`{ reason: count }`) as `reason: count` pairs (none: 0). */
function cell (value: unknown): string {
  if (Array.isArray(value)) return value.join(', ')
  if (typeof value === 'object' && value !== null) return Object.entries(value).map(([k, n]) => `${k}: ${String(n)}`).join(', ') || '0'
  return String(value ?? '')
}

function table (rows: Row[], columns: Array<[string, string]>): string {
  return [`| ${columns.map(([, h]) => h).join(' | ')} |`, `| ${columns.map(() => '---').join(' | ')} |`,
    ...rows.map((r) => `| ${columns.map(([k]) => cell(r[k])).join(' | ')} |`)].join('\n')
}

const median = (values: number[]): number => {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length === 0 ? NaN : sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}
const spread = (values: number[]): string => values.length === 0 ? '–' : `${Math.min(...values)}–${Math.max(...values)}`

/**
 * Rows of interleaved rounds folded into one row per (target, key): the median and range of each measure, and its
 * ratio to the reference target's for the same key, paired by round (a round's targets ran back to back, on the
 * machine as it was then): the median of the per-round ratios, and their range.
 */
function rounds (rows: Row[], keys: string[], measures: string[], reference: string): Row[] {
  const groups = new Map<string, Row[]>()
  for (const r of rows) {
    const id = [r.target, ...keys.map((k) => r[k])].join('\u0000')
    groups.set(id, [...groups.get(id) ?? [], r])
  }
  const out: Row[] = []
  for (const group of groups.values()) {
    const first = group[0]
    const row: Row = { target: LABELS[first.target] ?? first.target, rounds: group.length }
    for (const k of keys) row[k] = first[k]
    const ref = rows.filter((r) => r.target === reference && keys.every((k) => r[k] === first[k]))
    for (const m of measures) {
      const values = group.map((r) => Number(r[m]))
      row[m] = `${Math.round(median(values) * 100) / 100} (${spread(values)})`
      const paired = group.flatMap((r) => {
        const other = ref.find((o) => o.round === r.round)
        return other === undefined || Number(other[m]) === 0 ? [] : [Number(r[m]) / Number(other[m])]
      })
      row[`${m}Ratio`] = paired.length === 0 ? '–' : `${median(paired).toFixed(2)}×${paired.length > 1 ? ` (${Math.min(...paired).toFixed(2)}–${Math.max(...paired).toFixed(2)})` : ''}`
    }
    out.push(row)
  }
  return out
}

/** A chart of one measure's medians over the rounds: groups by `key`, one bar per target. */
function roundsChart (file: string, title: string, unit: string, rows: Row[], key: string, label: (value: unknown) => string, measure: string): void {
  const keys = [...new Set(rows.map((r) => r[key]))]
  const targets = [...new Set(rows.map((r) => r.target as string))]
  const value = (group: string, target: string): number =>
    median(rows.filter((r) => r.target === target && label(r[key]) === group).map((r) => Number(r[measure])))
  writeFileSync(file, barChart(title, unit, keys.map(label), targets, value))
}

/** The hot-entity table (fan-out, saturation): with the server's CPU per delivery when the run measured it. */
function hotTable (rows: Row[], byRate: boolean): string {
  const cpu = rows.every((r) => r.cpuUsPerDelivery !== undefined)
  const measures = ['deliveredPerSecond', 'p50', 'p99', ...cpu ? ['cpuUsPerDelivery'] : []]
  const columns: Array<[string, string]> = [['target', 'target'], ...byRate ? [['rate', 'changes/s'] as [string, string]] : [], ['rounds', 'rounds'],
    ['deliveredPerSecond', 'delivered/s'], ['deliveredPerSecondRatio', 'to raw ws'], ['p50', 'p50 ms'], ['p99', 'p99 ms'], ['p99Ratio', 'p99 to raw ws'],
    ...cpu ? [['cpuUsPerDelivery', 'server CPU µs per delivery'], ['cpuUsPerDeliveryRatio', 'to raw ws']] as Array<[string, string]> : []]
  return table(rounds(rows, ['rate'], measures, 'ws'), columns)
}

function scaleSections (dir: string): string[] {
  const out: string[] = []
  const memory = load(dir, 'memory')
  if (memory !== null) {
    out.push('## Memory per idle socket', '', memory.description + '.', '', `Machine: ${JSON.stringify(memory.machine)}`, '',
      table(rounds(memory.rows, ['entities'], ['kibPerConnection'], 'ws'),
        [['target', 'target'], ['entities', 'entities'], ['rounds', 'rounds'], ['kibPerConnection', 'KiB per socket, median (range)'], ['kibPerConnectionRatio', 'to raw ws']]), '', '![memory per idle socket](results/memory.svg)', '')
    roundsChart(join(dir, 'memory.svg'), 'Server memory per idle socket, 10K sockets (median)', 'KiB', memory.rows, 'entities',
      (n) => `${Number(n).toLocaleString('en')} ${n === 1 ? 'entity' : 'entities'}`, 'kibPerConnection')
  }
  const fanout = load(dir, 'fanout')
  if (fanout !== null) {
    out.push('## Fan-out of one hot entity', '', fanout.description + '.', '', `Machine: ${JSON.stringify(fanout.machine)}`, '',
      hotTable(fanout.rows, true), '', '![fan-out p99](results/fanout-p99.svg)', '')
    roundsChart(join(dir, 'fanout-p99.svg'), 'One hot entity, 10K sockets: p99 latency (median)', 'ms', fanout.rows, 'rate', (n) => `${String(n)} changes/s`, 'p99')
  }
  const saturation = load(dir, 'saturation')
  if (saturation !== null) {
    out.push('## Saturation: one hot entity at 10 changes/s', '', saturation.description + '.', '', `Machine: ${JSON.stringify(saturation.machine)}`, '',
      hotTable(saturation.rows, false), '')
  }
  const storm = load(dir, 'storm')
  if (storm !== null) {
    out.push('## Reconnect storm', '', storm.description + '.', '', `Machine: ${JSON.stringify(storm.machine)}`, '',
      table(rounds(storm.rows, [], ['seconds'], 'changefeed-memory'),
        [['target', 'target'], ['rounds', 'rounds'], ['seconds', 'seconds, median (range)'], ['secondsRatio', 'to the memory bus']]), '')
  }
  const cluster = load(dir, 'cluster')
  if (cluster !== null) {
    out.push('## Redis Cluster', '', cluster.description + '.', '', `Machine: ${JSON.stringify(cluster.machine)}`, '',
      table(rounds(cluster.rows, ['entities', 'rate'], ['delivered', 'p50', 'p99'], 'changefeed-redis'),
        [['target', 'target'], ['entities', 'entities'], ['rate', 'changes/s'], ['rounds', 'rounds'], ['delivered', 'delivered'], ['p50', 'p50 ms'], ['p99', 'p99 ms'], ['p99Ratio', 'p99 to one Redis']]), '')
  }
  return out
}

/** How to read the jitter tables. */
const JITTER_NOTES = [
  'The shape of AnyCable\'s 2026 "delivery under jitter" (10,000 clients there; Socket.IO 84.55 %, 100 % with',
  'connection-state recovery on one node, replay p99 4.58 s; AnyCable 100 %, replay p99 6.14 s), scaled to what this',
  'machine runs beside its load: the clients, the servers, Redis, NATS and PostgreSQL share its cores. Socket.IO runs',
  'here with connection-state recovery on one node, its documented limit (recovery does not work with its Redis',
  'adapter), fed by a trigger on the same table; its clients are cut the same way and reconnect with the same delays.',
  'Every resume of ours is answered from the bus\'s history (`resumes recovered`), none from PostgreSQL (`document',
  'reads` 0: the trigger inlines the small document; a resume reads nothing); a client cut before its first change',
  'resumes from the position its `subscribed` reply gave it. PostgreSQL transactions are counted in pg_stat_database',
  'over the run, less the writer\'s and an idle baseline of the same servers (listener probes, the followers\' leader',
  'retries). With three instances the followers listen on standby, and PostgreSQL counts a transaction each time a',
  'listening backend reads a NOTIFY from its queue: about two per change for two followers, which is most of the',
  'column for the ×3 rows (the memory bus, one instance, has no followers); none of it is a query of ours. `missed`',
  'counts changes a client never handed to the application (`in middle`: not one of the last, which a client still',
  'coming back at the end may lack); `missed without a resync` those of clients never told to refetch and not still',
  'away at the end (their resume not yet answered, a minute after the last change), a silent gap. Socket.IO misses a',
  'client cut before its first packet (no offset: its session is not recovered, `resyncs`), and makes no query of its',
  'own here, so its PostgreSQL column is this estimate\'s noise floor (autovacuum\'s visits, the statistics\' timing).', ''
]

/** Our rows against Socket.IO's (one node, connection-state recovery), as ratios. */
function jitterRatios (rows: Row[]): string[] {
  const peer = rows.find((r) => String(r.target).startsWith('socketio'))
  if (peer === undefined) return []
  const ratio = (a: number, b: number): string => b === 0 ? '–' : `${(a / b).toFixed(2)}×`
  return ['Against Socket.IO with recovery on one node, in the same run (ours / Socket.IO): ' + rows.filter((r) => r !== peer)
    .map((r) => `${String(r.target)}: delivered ${ratio(r.deliveredPercent, peer.deliveredPercent)}, replay p50 ${ratio(r.replayP50, peer.replayP50)}, p99 ${ratio(r.replayP99, peer.replayP99)}`).join('; ') + '.', '']
}

/** What the deploy row says, in words, with its numbers. */
function deployFindings (r: Row): string[] {
  const steps = r.steps as Row[]
  const resumes = Number(r.resumesRecovered) + Number(r.resumesNotRecovered)
  const moved = Number(r.resumesNotRecovered) === 0
    ? ['Every resume was recovered: each restart moved the capture\'s leadership to a follower on standby, which published',
        'what the old leader had not, so no channel\'s history was marked with a gap (`resync` frames: ' + cell(r.resyncFrames) + ').']
    : [`${Number(r.resumesNotRecovered).toLocaleString('en')} of ${resumes.toLocaleString('en')} resumes were not recovered (\`resync\` frames: ${cell(r.resyncFrames)}); a client of a \`full\``,
        'type holds the document and resumes with `snapshot`, so each reads its entity: about one transaction each.']
  return [`In this run: ${Number(r.lost).toLocaleString('en')} of ${Number(r.expected).toLocaleString('en')} deliveries lost (lost silently: ${String(r.lostSilently)}), ${Number(r.duplicates).toLocaleString('en')} duplicates.`,
    ...moved,
    `The recovered resumes read nothing, and took ${String(r.recoveredCloseToResumedP50)} ms (p50) / ${String(r.recoveredCloseToResumedP95)} ms (p95) from close to \`subscribed\`, the`,
    '500 ms the close asks for included. The survivors\' new connections per second stayed at each step\'s bound (peaks',
    `${steps.map((s) => `${String(s.peakNewConnectionsPerSecond)} / ${String(s.bound)}`).join(', ')}). A drained client goes to another of its URLs at random, so the`,
    `instances restarted later hold more sockets, not all of them (${steps.map((s) => String(s.sockets)).join(' → ')}).`, '']
}

function resumeSections (dir: string): string[] {
  const out: string[] = []
  for (const [name, title] of [['jitter', 'Delivery under jitter — resumes from the bus\'s history'], ['jitter-10000', 'Delivery under jitter, 10,000 clients']]) {
    const jitter = load(dir, name)
    if (jitter === null) continue
    out.push(`## ${title}`, '', jitter.description + '.', '', `Machine: ${JSON.stringify(jitter.machine)}`, '',
      ...name === 'jitter'
        ? JITTER_NOTES
        : ['The same scenario at the issue\'s size, the clients spread over load-generator processes; the columns read as',
            'above. At this size the reconnects (about 670 a second) compete with the servers, the brokers and PostgreSQL for',
            'the two cores. Two causes had kept NATS short (78.7–93.6 % delivered, replay p99 2–5 s, 700–2,200 resumes',
            'refused): a resume read the subject one JetStream direct get per message (about 25 per resume here, queueing',
            'for seconds), so each instance now keeps what its resumes read and asks only what came since, in one round',
            'shared by the resumes of that moment; and the standalone server listened with Node\'s default backlog of 511,',
            'which the reconnects overflowed (the kernel counted 565,000 overflows over three runs; a client whose connect',
            'was dropped waited out TCP\'s SYN retries, up to a minute away), so `server.backlog` is now 4096. Three runs',
            'since, each 100 % delivered with no resume refused and no document read: replay p99 NATS ×3 534 / 593 / 808 ms,',
            'Redis ×3 562 / 550 / 996 ms (the table is the last; the spread is this machine\'s).', ''],
      table(jitter.rows, [['target', 'target'], ...jitter.rows.every((r) => r.loadAverageAtStart !== undefined) ? [['loadAverageAtStart', 'load average at start'] as [string, string]] : [], ['clients', 'clients'], ['processes', 'client processes'], ['deliveredPercent', 'delivered %'], ['duplicates', 'duplicates'], ['missed', 'missed'], ['missedInMiddle', 'in middle'], ['missedSilently', 'missed without a resync'], ...jitter.rows.every((r) => r.awayAtEnd !== undefined) ? [['awayAtEnd', 'clients still away at the end'], ['missedWhileAway', 'missed by them']] as Array<[string, string]> : [], ['resyncs', 'resyncs'], ['conflated', 'conflated'], ['replays', 'replays'], ['replayP50', 'replay p50 ms'],
        ['replayP99', 'replay p99 ms'], ['replayMax', 'replay max ms'], ['resumesRecovered', 'resumes recovered'], ['resumesNotRecovered', 'not recovered'], ['documentReads', 'document reads'],
        ['pgTransactionsBeyondWriterAndIdle', 'PostgreSQL transactions beyond the writer\'s and idle']]), '', ...jitterRatios(jitter.rows))
  }
  for (const [name, title] of [['deploy', 'Deploy — a rolling restart under load'], ['deploy-nats', 'Deploy on NATS']]) {
    const deploy = load(dir, name)
    if (deploy === null) continue
    out.push(`## ${title}`, '', deploy.description + '.', '', `Machine: ${JSON.stringify(deploy.machine)}`, '',
      '`lost`: changes written to a client\'s entity that it never handed to the application (`silently`: by clients',
      'never told to refetch). Close → resumed: the drained socket\'s close to the `subscribed` reply of its resume (the',
      'close asks the client to wait 500 ms, and it adds up to as much again at random). Resumes: the servers\' counters',
      '(subscribes with `since`); a client that had no position yet (no change of its entity reached it before its',
      'socket closed) subscribes afresh, counted apart. New connections per second: the instances not restarting, sampled',
      'each second, against each step\'s bound, the draining instance\'s sockets / `drainSeconds`. PostgreSQL',
      'transactions: the run\'s, less the writer\'s, the instances\' idle rate and three starts, both measured beforehand',
      'with no clients.', '', ...deployFindings(deploy.rows[0]),
      table(deploy.rows, [['loadAverageAtStart', 'load average at start'], ['sockets', 'sockets'], ['processes', 'client processes'], ['writes', 'changes'], ['expected', 'expected deliveries'], ['lost', 'lost'], ['lostSilently', 'lost silently'], ['duplicates', 'duplicates'],
        ['closes', 'closes by code'], ['resumes', 'resumed'], ['stillAwayAtEnd', 'not resumed a minute after the last restart'], ['closeToResumedP50', 'close → resumed p50 ms'], ['closeToResumedP95', 'p95 ms'], ['closeToResumedMax', 'max ms'],
        ['resumesRecovered', 'resumes recovered'], ['resumesNotRecovered', 'not recovered'], ['clientsWithoutPosition', 'afresh (no position)'], ['resyncFrames', 'resync frames'],
        ['newConnectionsPerSecondPeak', 'survivors\' new connections/s, peak'], ['documentReads', 'document reads'], ['pgTransactionsBeyondWriterIdleAndStarts', 'PostgreSQL transactions beyond writer, idle, starts']]), '',
      table(deploy.rows[0].steps as Row[], [['instance', 'restarted'], ['sockets', 'its sockets'], ['drainedSeconds', 'SIGTERM → exit s'], ['startSeconds', 'new one ready s'], ['peakNewConnectionsPerSecond', 'survivors\' new connections/s, peak'], ['bound', 'bound (sockets / drainSeconds)']]), '')
  }
  return out
}

export function writeReport (dir: string): void {
  const out: string[] = ['# Benchmarks', '',
    'Produced by `npm run bench -- <scenario>` (test/bench/run.ts); each run rewrites its results/*.json and this report.',
    'Everything runs on one machine over loopback: servers, load generators (several processes, each from its own',
    '127.0.0.x address) and Redis/PostgreSQL share its cores, so absolute numbers are this machine\'s; ratios between',
    'targets measured in the same run are the meaningful part. The scenarios that run in interleaved rounds (memory,',
    'fan-out, storm, Redis Cluster) give each measure as median (range) over the rounds, and each ratio paired by',
    'round: the targets of a round ran back to back on the machine as it was then, so the ratio is taken in each round',
    'and the report gives their median (range).', '',
    'Peers run in the same run for the same job, receiving a change from Redis and delivering it to every watcher: a',
    'minimal raw `ws` server that frames each message once and writes the same buffer to every socket (the practical',
    'ceiling; it gets the very notification frame a host\'s publish makes, so both put the same bytes on the wire) and',
    'Socket.IO 4 with `@socket.io/redis-adapter` (what a team would build instead); fastify-changefeed runs as a host',
    'mounts it, the host calling `app.changefeed.publish()`. Each round rotates the order of the targets',
    '(`BENCH_ROUNDS`). Latency is measured from the change\'s *scheduled* time (or the trigger\'s clock) to receipt, into',
    'HDR histograms, so a slow server cannot hide its delay. Every scenario is bounded in time and stops every process',
    'it started. `BENCH_LOG_DIR=<dir>` keeps each of our instances\' warnings in `<dir>/changefeed-<port>.log`.', '',
    'Reading the hot-entity numbers: at 10 changes/s (100,000 deliveries/s) the cores are saturated and no target',
    'delivers everything. The server\'s CPU per delivery is the steady measure; the end-to-end ratios move from run to',
    'run, because the load generators share the cores and spend about twice the server\'s time per received frame, so',
    'within one run a round can land anywhere in that range whichever server it measures. At 2 and 5 changes/s the fixed',
    'cost of liveness shows: fastify-changefeed pings each socket every 30 s (raw ws pings no one).', '']
  out.push(...scaleSections(dir))
  const s2 = load(dir, 's2')
  if (s2 !== null) {
    out.push('## S2 — sparse changes through PostgreSQL', '', s2.description + '.', '', `Machine: ${JSON.stringify(s2.machine)}`, '',
      table(s2.rows, [['sockets', 'sockets'], ['entities', 'entities'], ['changesPerSecond', 'changes/s'], ['writes', 'writes'], ['delivered', 'delivered'], ['expected', 'expected'], ['p50', 'p50 ms'], ['p90', 'p90 ms'], ['p99', 'p99 ms'], ['max', 'max ms']]), '')
  }
  const s4 = load(dir, 's4')
  if (s4 !== null) {
    out.push('## S4 — capture throughput', '', s4.description + '.', '', `Machine: ${JSON.stringify(s4.machine)}`, '',
      'PostgreSQL on this machine commits at most about 1,500 single-row transactions per second from the benchmark\'s',
      'writer; capture kept up with every rate it reached (no backlog at the end of any step), so the capture ceiling',
      'is above what this machine can write.', '',
      table(s4.rows, [['targetRate', 'target writes/s'], ['achievedWriteRate', 'achieved writes/s'], ['capturedByEndOfWrites', 'captured by end'], ['capturedAfterDrain', 'captured after 2 s'], ['backlogAtEnd', 'backlog at end'], ['sustained', 'sustained']]), '')
  }
  const s5 = load(dir, 's5')
  if (s5 !== null) {
    out.push('## S5 — 100,000 connections', '', s5.description + '.', '', `Machine: ${JSON.stringify(s5.machine)}`, '',
      table(s5.rows, [['instances', 'instances'], ['sockets', 'sockets'], ['connectSeconds', 'connect s'], ['broadcasts', 'broadcasts'], ['delivered', 'delivered'], ['expected', 'expected'], ['p50', 'p50 ms'], ['p99', 'p99 ms'], ['max', 'max ms'], ['rssMiBPerInstance', 'RSS MiB per instance']]), '')
  }
  const s6 = load(dir, 's6')
  if (s6 !== null) {
    out.push('## S6 — document reads for full payloads', '', s6.description + '.', '', `Machine: ${JSON.stringify(s6.machine)}`, '',
      table(s6.rows, [['watchers', 'watchers'], ['changes', 'changes'], ['documentReads', 'document reads'], ['readsPerChange', 'reads per change'], ['deliveries', 'deliveries'], ['p50', 'p50 ms'], ['p99', 'p99 ms']]), '')
  }
  const s7 = load(dir, 's7')
  if (s7 !== null) {
    out.push('## S7 — `full` and `delta` payloads', '', s7.description + '.', '', `Machine: ${JSON.stringify(s7.machine)}`, '',
      table((s7 as Result & { summary: Row[] }).summary, [['kind', 'change'], ['documentBytes', 'document bytes'], ['fullBytes', 'full: bytes per change'], ['deltaBytes', 'delta: bytes per change'],
        ['bytesRatio', 'delta / full'], ['fullCpuMicros', 'full: server CPU µs per delivery'], ['deltaCpuMicros', 'delta: server CPU µs per delivery'], ['cpuRatio', 'delta / full CPU, paired by round']]), '')
  }
  const s8 = load(dir, 's8')
  if (s8 !== null) {
    out.push('## S8 — filtered feeds', '', s8.description + '.', '', `Machine: ${JSON.stringify(s8.machine)}`, '',
      table(s8.rows, [['filters', 'filters on the type'], ['cpuMicrosPerChange', 'server CPU µs per change (median)'], ['range', 'range'], ['ratio', 'to the unfiltered feed'], ['framesPerChange', 'frames per change']]), '')
  }
  const presence = load(dir, 'presence') as (Result & { room: Row, signals: Row[], loadAverageAtStart?: number }) | null
  if (presence !== null) {
    out.push('## Presence — a big room, and signals', '', presence.description + '.', '', `Machine: ${JSON.stringify(presence.machine)}; load average at the start: ${presence.loadAverageAtStart ?? '?'} (other work on the machine shows in the latencies)`, '',
      '**One room, steady churn.** Above `maxMembers` (100) sockets get counts only, at most once a second: the frames per socket per second stay at most 1 whatever the churn, where a broadcast of every join and leave would send each socket every one of them. The CPU is each instance\'s over the churn less its idle CPU; Redis memory is the room\'s hash (`MEMORY USAGE`) per entry (an instance\'s user).', '',
      table([presence.room], [['members', 'members'], ['instances', 'instances'], ['joinsPerSecond', 'joins/s'], ['leavesPerSecond', 'leaves/s'], ['framesPerSocketPerSecond', 'frames per socket per s'],
        ['plainBroadcastFramesPerSocketPerSecond', 'a broadcast of each event: frames per socket per s'], ['serverCpuPercentOfCorePerInstance', 'server CPU % of a core, per instance'], ['redisBytesPerMember', 'Redis bytes per member']]), '',
      '**Signals.** Each editor sends 20 signals a second; every other editor receives each (the plain ws server broadcasts to all 50, as it has no notion of a sender). Latency from the sender\'s clock to receipt; server CPU is the sum over the servers under test (ours: three instances, each receiving every signal from Redis). Rounds are interleaved; the first round of ours includes the instances\' warm-up.', '',
      table(presence.signals, [['target', 'server'], ['round', 'round'], ['signalsPerSecond', 'signals/s'], ['framesPerSocketPerSecond', 'frames per socket per s'], ['p50', 'p50 ms'], ['p99', 'p99 ms'], ['max', 'max ms'], ['serverCpuPercentOfCore', 'server CPU % of a core']]), '')
    const median = (target: string, field: string): number => {
      const values = presence.signals.filter((r) => r.target === target).map((r) => Number(r[field])).sort((a, b) => a - b)
      return values[Math.floor(values.length / 2)] ?? NaN
    }
    const ratio = (field: string): string => (median('changefeed', field) / median('ws', field)).toFixed(2)
    out.push(`Medians over the rounds, fastify-changefeed / plain ws: p50 ${ratio('p50')}×, p99 ${ratio('p99')}×, server CPU ${ratio('serverCpuPercentOfCore')}× (three instances, each receiving every signal, against one process).`, '')
  }
  out.push(...resumeSections(dir))
  writeFileSync(join(dir, '..', 'REPORT.md'), out.join('\n') + '\n')
}
