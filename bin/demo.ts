/**
 * `fastify-changefeed --demo`: Marten-shaped demo tables (bin/demo-tables.ts), a simulated live match that writes a
 * minute of play every second through real SQL (bin/demo-match.ts: events appended to the match's stream, the score
 * and the players' documents, so the real triggers fire), and the demo pages.
 */
import { createHmac, randomBytes } from 'node:crypto'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import type { Database } from '../lib/capture/database.js'
import type { ChangefeedOptions, ResolvedOptions } from '../lib/options.js'
import { hashPassword } from '../lib/auth/passwords.js'
import { packageRoot } from '../lib/package.js'
import { kickOff, playMinute, readMatch, writeMinute } from './demo-match.js'
import { createTables } from './demo-tables.js'

export const DEMO_ENTITIES: NonNullable<ChangefeedOptions['entities']> = {
  // who else is editing the team, and which player they point at
  Team: { access: 'public', payload: 'minimal', presence: { intervalMs: 100 }, signals: true },
  Fixture: { access: 'public', payload: 'full' },
  RugbyGameState: { access: 'public', payload: 'delta' },
  Player: { access: 'public', payload: 'full', feed: true },
  // the match's event stream (mt_streams.type "match"): its appended events; there is no document table
  Match: { access: 'public' }
}

/** The account the demo makes for its admin-only endpoints, with a password of this start's. */
export const DEMO_ADMIN = 'demo-admin'

export interface Demo {
  options: ResolvedOptions
  /** what the demo says once it listens at `address`: where to look, and the admin account */
  banner (address: string): string
  /** the secret of the demo's own sign-in (the team page's names), when the configuration has no JWT settings */
  tokenSecret: string | null
}

/** A token for a demo user: anyone may be anyone here (the team page asks for a name). */
function demoToken (secret: string, user: string): string {
  const part = (value: object): string => Buffer.from(JSON.stringify(value)).toString('base64url')
  const unsigned = `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ sub: user, exp: Math.floor(Date.now() / 1000) + 3600 })}`
  return `${unsigned}.${createHmac('sha256', secret).update(unsigned).digest('base64url')}`
}

/**
 * The demo's types beside the configured ones (which win), Marten's event store captured (the `match` streams are
 * the `Match` type's), and an admin account (`demo-admin`, a new password each start) for `/changefeed/stats`.
 */
export async function prepareDemo (options: ResolvedOptions): Promise<Demo> {
  const events = { ...options.capture.events, enabled: true, types: { match: 'Match', ...options.capture.events.types } }
  const password = randomBytes(12).toString('base64url')
  const adminRole = options.auth.adminRoles[0] ?? 'Admin'
  const admin = { username: DEMO_ADMIN, passwordHash: await hashPassword(password), roles: [adminRole] }
  // the team page signs its visitors in under a name of their choosing, to show who else is editing
  const tokenSecret = options.auth.jwt === undefined ? randomBytes(32).toString('base64url') : null
  const auth = {
    ...options.auth,
    jwt: options.auth.jwt ?? { secret: tokenSecret, requireExpiry: true, userIdClaim: 'sub', rolesClaim: 'roles' },
    adminRoles: options.auth.adminRoles.length > 0 ? options.auth.adminRoles : [adminRole],
    basic: { accounts: [...options.auth.basic?.accounts ?? [], admin] }
  }
  const demo = { ...options, auth, capture: { ...options.capture, events }, entities: { ...DEMO_ENTITIES, ...options.entities } } as ResolvedOptions
  return {
    options: demo,
    tokenSecret,
    banner: (address) => {
      const stats = demo.telemetry.statsPath
      return [
        `fastify-changefeed --demo: open ${address} (the match centre; ${address}/team in two windows)`,
        `  WebSocket: ${address.replace(/^http/, 'ws')}${demo.server.path}`,
        ...stats === null ? [] : [`  statistics: curl -u ${DEMO_ADMIN}:${password} ${address}${stats}`],
        '  Ctrl-C stops it.',
        ''
      ].join('\n')
    }
  }
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

/**
 * A tiny read-model API, as a site that polls one today has: the team page refetches a team from it on minimal notifications
 * and resyncs; the match page reads the latest events of the match's stream (Marten's FetchStream) when it opens
 * and after a gap.
 */
function registerReadModel (app: FastifyInstance, db: Database): void {
  const read = async (table: string, id: string): Promise<unknown> =>
    (await db.query<{ data: unknown }>(`SELECT data FROM ${table} WHERE id = $1 AND NOT coalesce(mt_deleted, false)`, [id]))[0]?.data ?? null
  app.get<{ Params: { id: string } }>('/api/matches/:id/events', async (request) =>
    await db.query('SELECT type, version::int AS version, data FROM mt_events WHERE stream_id = $1 AND NOT is_archived ORDER BY version DESC LIMIT 40',
      [request.params.id]))
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
 * Starts the demo on the database named `main`: tables, pages, read-model API, and a simulated match writing a
 * minute every `intervalMs` (CHANGEFEED_DEMO_TICK_MS; 0: no simulated writes). Returns a function that stops it.
 */
export async function startDemo (app: FastifyInstance, intervalMs = Number(process.env.CHANGEFEED_DEMO_TICK_MS ?? 1000), tokenSecret: string | null = null): Promise<() => void> {
  const db = app.changefeed.databases.get('main')
  if (db === undefined) throw new Error('the demo needs a database named "main"')
  await createTables(db)
  await app.changefeed.rescan()
  registerPages(app)
  registerReadModel(app, db)
  if (tokenSecret !== null) {
    app.get<{ Querystring: { user?: string } }>('/api/demo-token', async (request, reply) => {
      const user = String(request.query.user ?? '').trim().slice(0, 40)
      return user === '' ? await reply.code(400).send({ error: 'user is required' }) : { token: demoToken(tokenSecret, user) }
    })
  }
  const id = 'match-1'
  // a database that has the match already goes on with it; the squads are in place since createTables
  if ((await readMatch(db, id)).game === undefined) await writeMinute(db, { ...kickOff(id), players: [] })
  if (intervalMs <= 0) return () => {}

  let writing = false
  const timer = setInterval(() => {
    if (writing) return
    writing = true
    // read afresh each minute, so that a score or a player written by hand (psql) plays on from there
    readMatch(db, id)
      .then(async ({ game, squad }) => await writeMinute(db, game === undefined ? kickOff(id) : playMinute(game, squad)))
      .catch((err: Error) => app.log.error({ err }, 'demo: writing the match failed'))
      .finally(() => { writing = false })
  }, intervalMs)
  timer.unref()
  app.addHook('onClose', async () => clearInterval(timer))
  return () => clearInterval(timer)
}
