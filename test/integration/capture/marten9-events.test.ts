/**
 * Marten 9's event store (test/fixtures/marten: events9.ts), appended to by its new quick-append function: with
 * tenant-partitioned events an aggregate that has no document table is tenanted without being declared so (two
 * tenants' streams with one id are two entities); DCB tags change nothing; TRUNCATE of the event tables
 * (DeleteAllEventData) or of one tenant's partition of them reaches the aggregates' watchers as a `resync`, and
 * nobody else.
 */
import t from 'tap'
import pg from 'pg'
import { randomUUID } from 'node:crypto'
import { freshDatabase } from '../../helpers/services.js'
import { role } from '../../helpers/roles.js'
import { startApp } from '../../helpers/app.js'
import { isNotification, type Frame, type TestClient } from '../../helpers/client.js'
import { now, signHs256 } from '../../helpers/tokens.js'
import {
  deleteAllEventDataSql, documentSchema, eventStore9, quickAppendCall9, storeCommand, tenantEventPartition, tenantPartitionsTable,
  type DocumentOptions, type EventStore9Options, type MartenCommand
} from '../../fixtures/marten/index.js'

const SECRET = 'a-test-secret-of-enough-length-0123456789'
const token = (sub: string, tenant: string | null, roles: string[] = []): string =>
  signHs256({ sub, roles, exp: now() + 600, ...(tenant === null ? {} : { org: { tenant } }) }, SECRET)
const auth = { jwt: { secret: SECRET, tenantClaim: 'org.tenant' } }
const scored = (n: number): { id: string, type: string, dotnetType: string, data: unknown } =>
  ({ id: randomUUID(), type: 'try_scored', dotnetType: 'Sports.TryScored, Sports', data: { n } })
const team: DocumentOptions = { schema: 'public', name: 'team', idType: 'string', marten: 9 }

async function martenDatabase (label: string, sql: string[]): Promise<{ url: string, run: (c: MartenCommand | string) => Promise<pg.QueryResult> }> {
  const url = await freshDatabase(t, label)
  const marten = await role(t, url, `${label}_app`, ['public'])
  const db = await marten.client()
  for (const statement of sql) await db.query(statement)
  return { url, run: async (c) => typeof c === 'string' ? await db.query(c) : await db.query(c.text, c.values) }
}

const resyncOf = async (ws: TestClient, entityType: string, entityId: string): Promise<Frame> =>
  await ws.next((m) => m.type === 'resync' && m.data.entityType === entityType && m.data.entityId === entityId)

t.test('tenant-partitioned events: an aggregate without a table is tenanted, found', async (t) => {
  const store: EventStore9Options = { schema: 'public', streamIdentity: 'string', tenantPartitioned: true }
  const { url, run } = await martenDatabase('marten9_events_tenants', [tenantPartitionsTable('public'), eventStore9(store), tenantEventPartition(store, 'Red'), tenantEventPartition(store, 'Blue')])
  const { app, client } = await startApp(t, {
    databases: [{ name: 'ballr', url }],
    capture: { channel: 'marten9:events', events: { enabled: true } },
    // Match has no table and is not declared tenanted: its streams say it
    entities: { Match: { access: 'authenticated', feed: true } },
    auth
  })
  t.equal(app.changefeed.registry.get('Match')?.tenancy, 'conjoined', 'tenanted: the event store belongs to tenants')
  const red = await client(`?token=${token('r', 'Red')}`)
  const admin = await client(`?token=${token('boss', null, ['Admin'])}`)
  t.match(await red.subscribe('Match', 'game'), { type: 'subscribed', data: { tenantId: 'Red' } })
  await admin.subscribe('Match', 'game')
  await run(quickAppendCall9(store, { streamId: 'game', streamType: 'match', tenantId: 'Blue', events: [scored(1)] }))
  await run(quickAppendCall9(store, { streamId: 'game', streamType: 'match', tenantId: 'Red', events: [scored(2), scored(3)] }))
  const first = await admin.next(isNotification('Match', 'game'))
  const second = await admin.next(isNotification('Match', 'game'))
  t.same([first.data.tenantId, second.data.tenantId], ['Blue', 'Red'], 'two entities, each tagged')
  t.match((await red.next(isNotification('Match', 'game'))).data, { tenantId: 'Red', changeType: 'appended', payload: [{ data: { n: 2 } }, { data: { n: 3 } }] })
  t.same(red.messages.filter(isNotification('Match', 'game')), [], 'Red never saw Blue\'s game')

  // one tenant's partitions emptied: that tenant's watchers, and every tenant's
  const blue = await client(`?token=${token('b', 'Blue')}`)
  await blue.subscribe('Match', 'game')
  await run('TRUNCATE public.mt_events_red, public.mt_streams_red')
  t.match(await resyncOf(red, 'Match', 'game'), { data: { reason: 'truncated', tenantId: 'Red' } })
  t.match(await resyncOf(admin, 'Match', 'game'), { data: { reason: 'truncated' } })
  await run(quickAppendCall9(store, { streamId: 'game', streamType: 'match', tenantId: 'Blue', events: [scored(4)] }))
  await blue.next(isNotification('Match', 'game'))
  t.same(blue.messages.filter((m) => m.type === 'resync'), [], 'Blue lost nothing')
})

t.test('DCB tags; DeleteAllEventData: the aggregates\' watchers resync, the documents\' do not', async (t) => {
  const store: EventStore9Options = { schema: 'public', streamIdentity: 'string', tags: ['player'] }
  const { url, run } = await martenDatabase('marten9_events_single', [eventStore9(store), documentSchema(team)])
  const { client } = await startApp(t, {
    databases: [{ name: 'ballr', url }],
    capture: { channel: 'marten9:single', events: { enabled: true, types: { match: 'Match' } } },
    entities: { Match: { access: 'public', feed: true }, Team: { access: 'public' } }
  })
  const ws = await client()
  await ws.subscribe('Match', 'game')
  await ws.subscribe('Match', '*')
  await ws.subscribe('Team', 't-1')
  await run(quickAppendCall9(store, { streamId: 'game', streamType: 'match', events: [scored(1), scored(2)], tags: { player: ['p-9', null] } }))
  t.match((await ws.next(isNotification('Match', 'game'))).data, { changeType: 'appended', payload: [{ version: 1 }, { version: 2 }] }, 'appended, tags and all')
  t.equal((await run('SELECT count(*)::int AS n FROM public.mt_event_tag_player')).rows[0].n, 1, 'the tag was written')

  await run(deleteAllEventDataSql('public'))
  t.match(await resyncOf(ws, 'Match', 'game'), { data: { reason: 'truncated' } }, 'the stream\'s watchers')
  t.match(await resyncOf(ws, 'Match', '*'), { data: { reason: 'truncated' } }, 'and the feed')
  await run(storeCommand(team, 'upsert', { id: 't-1', doc: {} }))
  await ws.next(isNotification('Team', 't-1'))
  t.same(ws.messages.filter((m) => m.type === 'resync'), [], 'a document\'s watchers lost nothing')
  await run(quickAppendCall9(store, { streamId: 'game', streamType: 'match', events: [scored(3)] }))
  t.match((await ws.next(isNotification('Match', 'game'))).data, { payload: [{ version: 1 }] }, 'appends after it are captured')
})
