/**
 * `fastify-changefeed --demo`: Marten-shaped demo tables (Team, Fixture, RugbyGameState), a simulated live match that
 * writes a score change every second through real SQL (so the real trigger fires), and the demo page.
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import type { Database } from '../lib/capture/database.js'
import type { ChangefeedOptions } from '../lib/options.js'
import { packageRoot } from '../lib/paths.js'

export const DEMO_ENTITIES: NonNullable<ChangefeedOptions['entities']> = {
  Team: { access: 'public', payload: 'minimal' },
  Fixture: { access: 'public', payload: 'full' },
  RugbyGameState: { access: 'public', payload: 'full' }
}

/** A Marten document table: id, data jsonb, mt_last_modified, mt_version, mt_dotnet_type, soft-delete columns. */
export const martenTableSql = (table: string, idType = 'varchar'): string => `
  CREATE TABLE IF NOT EXISTS ${table} (
    id               ${idType} PRIMARY KEY,
    data             jsonb NOT NULL,
    mt_last_modified timestamptz DEFAULT transaction_timestamp(),
    mt_version       uuid NOT NULL DEFAULT gen_random_uuid(),
    mt_dotnet_type   varchar,
    mt_deleted       boolean DEFAULT false,
    mt_deleted_at    timestamptz NULL
  )`

const TEAMS = [
  { id: 'team-1', name: 'Harbour Sharks', players: ['A. Tane', 'B. Moana', 'C. Rewi'] },
  { id: 'team-2', name: 'Valley Rams', players: ['D. Hughes', 'E. Price'] }
]

async function createTables (db: Database): Promise<void> {
  for (const table of ['mt_doc_team', 'mt_doc_fixture', 'mt_doc_rugbygamestate']) await db.query(martenTableSql(table))
  for (const team of TEAMS) {
    await db.query(
      'INSERT INTO mt_doc_team (id, data, mt_dotnet_type) VALUES ($1, $2, \'Demo.Team\') ON CONFLICT (id) DO NOTHING',
      [team.id, JSON.stringify(team)])
  }
  await db.query(
    'INSERT INTO mt_doc_fixture (id, data, mt_dotnet_type) VALUES (\'fixture-1\', $1, \'Demo.Fixture\') ON CONFLICT (id) DO NOTHING',
    [JSON.stringify({ id: 'fixture-1', matchId: 'match-1', homeTeamId: 'team-1', awayTeamId: 'team-2', venue: 'North Oval', status: 'live' })])
}

interface GameState {
  id: string
  homeTeamId: string
  awayTeamId: string
  homeScore: number
  awayScore: number
  minute: number
  period: 'First Half' | 'Second Half' | 'Full Time'
  lastEvent: string | null
}

const SCORING = [
  { points: 5, label: 'Try' },
  { points: 2, label: 'Conversion' },
  { points: 3, label: 'Penalty goal' }
]

/** One simulated minute of play: the clock moves, and now and then somebody scores. */
export function nextState (state: GameState, random: () => number = Math.random): GameState {
  if (state.period === 'Full Time') return { ...state, homeScore: 0, awayScore: 0, minute: 0, period: 'First Half', lastEvent: 'Kick-off' }
  const minute = state.minute + 1
  const next: GameState = { ...state, minute, period: minute >= 80 ? 'Full Time' : minute > 40 ? 'Second Half' : 'First Half', lastEvent: null }
  if (random() < 0.35) {
    const score = SCORING[Math.floor(random() * SCORING.length)]
    const home = random() < 0.5
    if (home) next.homeScore += score.points
    else next.awayScore += score.points
    next.lastEvent = `${score.label} (${home ? 'home' : 'away'})`
  }
  return next
}

/** The demo's pages, and the SDK they import. */
function registerPages (app: FastifyInstance): void {
  const file = (...parts: string[]): string => readFileSync(join(packageRoot, ...parts), 'utf8')
  const pages: Record<string, string> = {
    '/': file('examples', 'live-scores', 'index.html'),
    '/team': file('examples', 'live-scores', 'team.html')
  }
  for (const [path, html] of Object.entries(pages)) app.get(path, async (_request, reply) => await reply.type('text/html; charset=utf-8').send(html))
  // the SDK bundled into one dependency-free ES module by `npm run build` (its own modules import the protocol's)
  const sdk = file('dist', 'lib', 'client', 'browser.js')
  app.get('/sdk/client.js', async (_request, reply) => await reply.type('text/javascript; charset=utf-8').send(sdk))
}

/** A tiny read-model API, as the users' site has: the pages refetch from it on minimal notifications and resyncs. */
function registerReadModel (app: FastifyInstance, db: Database): void {
  const read = async (table: string, id: string): Promise<unknown> =>
    (await db.query<{ data: unknown }>(`SELECT data FROM ${table} WHERE id = $1 AND NOT coalesce(mt_deleted, false)`, [id]))[0]?.data ?? null
  app.get<{ Params: { id: string } }>('/api/matches/:id', async (request, reply) => {
    const data = await read('mt_doc_rugbygamestate', request.params.id)
    return data === null ? await reply.code(404).send({ error: 'not found' }) : data
  })
  app.get<{ Params: { id: string } }>('/api/teams/:id', async (request, reply) => {
    const data = await read('mt_doc_team', request.params.id)
    return data === null ? await reply.code(404).send({ error: 'not found' }) : data
  })
  // the write tags its transaction with the editor's id (changefeed.origin), so that tab can tell its own echo
  app.post<{ Params: { id: string }, Body: { name?: unknown }, Headers: { 'x-editor'?: string } }>('/api/teams/:id/players', async (request, reply) => {
    const name = typeof request.body?.name === 'string' ? request.body.name.trim().slice(0, 60) : ''
    if (name === '') return await reply.code(400).send({ error: 'name is required' })
    const rows = await db.query<{ data: unknown }>(
      `WITH origin AS (SELECT set_config('changefeed.origin', $3, true))
       UPDATE mt_doc_team SET data = jsonb_set(data, '{players}', coalesce(data->'players', '[]'::jsonb) || to_jsonb($2::text)),
              mt_version = gen_random_uuid(), mt_last_modified = now()
       FROM origin WHERE id = $1 RETURNING data`,
      [request.params.id, name, String(request.headers['x-editor'] ?? '')])
    return rows.length === 0 ? await reply.code(404).send({ error: 'not found' }) : rows[0].data
  })
}

/**
 * Starts the demo on the database named `main`: tables, pages, read-model API, and a simulated match writing every
 * `intervalMs` (CHANGEFEED_DEMO_TICK_MS; 0: no simulated writes). Returns a function that stops the match.
 */
export async function startDemo (app: FastifyInstance, intervalMs = Number(process.env.CHANGEFEED_DEMO_TICK_MS ?? 1000)): Promise<() => void> {
  const db = app.changefeed.databases.get('main')
  if (db === undefined) throw new Error('the demo needs a database named "main"')
  await createTables(db)
  await app.changefeed.rescan()
  registerPages(app)
  registerReadModel(app, db)

  const [existing] = await db.query<{ data: GameState }>('SELECT data FROM mt_doc_rugbygamestate WHERE id = \'match-1\'')
  let state: GameState = existing?.data ?? {
    id: 'match-1', homeTeamId: 'team-1', awayTeamId: 'team-2', homeScore: 0, awayScore: 0, minute: 0, period: 'First Half', lastEvent: 'Kick-off'
  }
  if (existing === undefined) {
    await db.query('INSERT INTO mt_doc_rugbygamestate (id, data, mt_dotnet_type) VALUES (\'match-1\', $1, \'Demo.RugbyGameState\')', [JSON.stringify(state)])
  }
  if (intervalMs <= 0) return () => {}

  let writing = false
  const timer = setInterval(() => {
    if (writing) return
    writing = true
    state = nextState(state)
    db.query(
      'UPDATE mt_doc_rugbygamestate SET data = $2, mt_version = gen_random_uuid(), mt_last_modified = now() WHERE id = $1',
      [state.id, JSON.stringify(state)])
      .catch((err: Error) => app.log.error({ err }, 'demo: writing the match state failed'))
      .finally(() => { writing = false })
  }, intervalMs)
  timer.unref()
  app.addHook('onClose', async () => clearInterval(timer))
  return () => clearInterval(timer)
}
