/**
 * Marten's event store as Marten writes it (test/fixtures/marten), in its own schema (Events.DatabaseSchemaName)
 * beside documents in two other schemas: rich and quick appends; archiving sends one `archived` notification and
 * never re-announces the archived events, with and without archived-stream partitioning; a stream without an
 * aggregate type goes to `capture.events.untypedAs` or is counted and logged; a conjoined event store keeps
 * tenants apart.
 */
import t from 'tap'
import pg from 'pg'
import { randomUUID } from 'node:crypto'
import { freshDatabase } from '../../helpers/services.js'
import { role } from '../../helpers/roles.js'
import { startApp, type RunningApp } from '../../helpers/app.js'
import { isNotification, type TestClient } from '../../helpers/client.js'
import { until } from '../../helpers/wait.js'
import {
  archiveStreamCall, documentSchema, eventStore, quickAppendCommands, reserveSequencesSql, richAppendCommands, upsertCall,
  type EventInput, type EventStoreOptions, type MartenCommand, type StreamAppend
} from '../../fixtures/marten/index.js'

const event = (type: string, data: object): EventInput => ({ id: randomUUID(), type, dotnetType: `Ballr.Events.${type}`, data })

interface Store {
  app: RunningApp
  db: pg.Client
  store: EventStoreOptions
}

async function start (label: string, store: EventStoreOptions, extra: { untypedAs?: string } = {}): Promise<Store> {
  const url = await freshDatabase(t, label)
  const marten = await role(t, url, `${label}_app`, ['public', 'ballr', store.schema])
  const db = await marten.client()
  await db.query(eventStore(store))
  await db.query(documentSchema({ schema: 'public', name: 'team', idType: 'string' }))
  await db.query(documentSchema({ schema: 'ballr', name: 'player', idType: 'string' }))
  const app = await startApp(t, {
    databases: [{ name: 'ballr', url, schema: 'public' }],
    capture: { channel: 'ballr:db_changes', events: { enabled: true, schema: store.schema, ...extra } },
    entities: {
      Match: { access: 'public' },
      Team: { access: 'public' },
      Player: { access: 'public', schema: 'ballr' },
      Unsorted: { access: 'public' }
    }
  })
  return { app, db, store }
}

const run = async (db: pg.Client, commands: MartenCommand[]): Promise<void> => {
  await db.query('BEGIN')
  for (const c of commands) await db.query(c.text, c.values)
  await db.query('COMMIT')
}

/** Marten's rich append: reserve sequence numbers, then the stream row and the events in one transaction. */
async function richAppend (s: Store, append: StreamAppend, currentVersion: number | null): Promise<void> {
  const { rows } = await s.db.query(reserveSequencesSql(s.store.schema, append.events.length))
  await run(s.db, richAppendCommands(s.store, { ...append, currentVersion, sequences: rows.map((r) => r.nextval as string) }))
}

const appended = async (ws: TestClient, id: string): Promise<Array<{ type: string, version: number, data: unknown }>> =>
  (await ws.next((m) => isNotification('Match', id)(m) && m.data.changeType === 'appended')).data.payload

t.test('events in their own schema, documents in two others', async (t) => {
  const s = await start('events_schema', { schema: 'events', streamIdentity: 'guid' })
  const ws = await s.app.client()
  const match = randomUUID()
  await ws.subscribe('Match', match)
  await ws.subscribe('Team', 'team-1')
  await ws.subscribe('Player', 'p-1')

  await richAppend(s, { streamId: match, streamType: 'match', events: [event('MatchStarted', { venue: 'North Oval' }), event('TryScored', { team: 'home' })] }, null)
  t.same((await appended(ws, match)).map((e) => [e.version, e.type]), [[1, 'MatchStarted'], [2, 'TryScored']], 'a rich append to a new stream')
  await richAppend(s, { streamId: match, streamType: 'match', events: [event('PenaltyKicked', { team: 'away' })] }, 2)
  t.same((await appended(ws, match)).map((e) => e.version), [3], 'a rich append to an existing stream')
  await run(s.db, quickAppendCommands(s.store, { streamId: match, streamType: 'match', events: [event('Conversion', { team: 'home', note: 'x'.repeat(9000) })] }))
  const quick = await appended(ws, match)
  t.match(quick, [{ version: 4, type: 'Conversion', data: { team: 'home' } }], 'a quick append (mt_quick_append_events), its data read back')

  await run(s.db, [upsertCall({ schema: 'public', name: 'team', idType: 'string' }, 'upsert', { id: 'team-1', doc: {} })])
  t.match((await ws.next(isNotification('Team', 'team-1'))).data, { changeType: 'created' }, 'a document in public')
  const player = upsertCall({ schema: 'ballr', name: 'player', idType: 'string' }, 'upsert', { id: 'p-1', doc: {} })
  await run(s.db, [player])
  t.match((await ws.next(isNotification('Player', 'p-1'))).data, { changeType: 'created' }, 'a document in ballr')

  await run(s.db, [archiveStreamCall(s.store, match)])
  t.match((await ws.next(isNotification('Match', match))).data, { changeType: 'archived', payloadType: 'minimal' }, 'archiving is one notification')
  await richAppend(s, { streamId: randomUUID(), streamType: 'match', events: [event('Marker', {})] }, null)
  await run(s.db, [player])
  await ws.next(isNotification('Player', 'p-1'))
  t.same(ws.messages.filter(isNotification('Match', match)), [], 'and nothing else about the archived stream')
})

t.test('archived-stream partitioning: archiving moves the rows, and re-announces nothing', async (t) => {
  const s = await start('events_partitioned', { schema: 'events', streamIdentity: 'string', archivedStreamPartitioning: true })
  const ws = await s.app.client()
  await ws.subscribe('Match', 'm-1')
  await richAppend(s, { streamId: 'm-1', streamType: 'match', events: [event('A', {}), event('B', {})] }, null)
  t.same((await appended(ws, 'm-1')).map((e) => e.type), ['A', 'B'])
  await run(s.db, [archiveStreamCall(s.store, 'm-1')])
  const archived = await ws.next(isNotification('Match', 'm-1'))
  t.match(archived.data, { changeType: 'archived' })
  const { rows } = await s.db.query('SELECT count(*)::int AS n FROM events.mt_events_archived')
  t.equal(rows[0].n, 2, 'Marten copied the events into the archived partition')
  await ws.subscribe('Team', 'marker')
  await run(s.db, [upsertCall({ schema: 'public', name: 'team', idType: 'string' }, 'upsert', { id: 'marker', doc: {} })])
  await ws.next(isNotification('Team', 'marker'))
  t.same(ws.messages.filter(isNotification('Match', 'm-1')), [], 'the copied events were not announced as appends')
})

t.test('a stream without an aggregate type is counted and logged, or goes to untypedAs', async (t) => {
  const counted = await start('events_untyped', { schema: 'events', streamIdentity: 'guid' })
  await run(counted.db, quickAppendCommands(counted.store, { streamId: randomUUID(), streamType: null, events: [event('Loose', {})] }))
  t.ok(await until(() => counted.app.app.changefeed.stats().dropped.untyped_stream === 1), 'counted as dropped: untyped_stream')

  const routed = await start('events_untyped_as', { schema: 'events', streamIdentity: 'guid' }, { untypedAs: 'Unsorted' })
  const ws = await routed.app.client()
  const stream = randomUUID()
  await ws.subscribe('Unsorted', stream)
  await run(routed.db, quickAppendCommands(routed.store, { streamId: stream, streamType: null, events: [event('Loose', { n: 1 })] }))
  t.match((await ws.next(isNotification('Unsorted', stream))).data, { changeType: 'appended', payload: [{ type: 'Loose' }] })
})

t.test('a conjoined event store keeps tenants\' streams apart', async (t) => {
  const s = await start('events_conjoined', { schema: 'events', streamIdentity: 'string', tenancy: 'conjoined' })
  const ws = await s.app.client()
  await ws.subscribe('Match', 'm-1')
  const big = 'x'.repeat(9000)
  await richAppend(s, { streamId: 'm-1', streamType: 'match', tenantId: 'Red', events: [event('RedOnly', { big })] }, null)
  await richAppend(s, { streamId: 'm-1', streamType: 'match', tenantId: 'Blue', events: [event('BlueOnly', { big })] }, null)
  const first = await appended(ws, 'm-1')
  const second = await appended(ws, 'm-1')
  t.same([first[0].type, second[0].type], ['RedOnly', 'BlueOnly'], 'each tenant\'s event data, read within its tenant')
})

t.test('an inline projection: the aggregate\'s document and its events in one transaction, on a delta type', async (t) => {
  const url = await freshDatabase(t, 'events_inline')
  const marten = await role(t, url, 'events_inline_app', ['public', 'events'])
  const db = await marten.client()
  const store: EventStoreOptions = { schema: 'events', streamIdentity: 'string' }
  await db.query(eventStore(store))
  const game = { schema: 'public', name: 'game', idType: 'string' } as const
  await db.query(documentSchema(game))
  const app = await startApp(t, {
    databases: [{ name: 'ballr', url, schema: 'public' }],
    capture: { channel: 'ballr:inline', events: { enabled: true, schema: 'events' } },
    entities: { Game: { access: 'public', payload: 'delta' } }
  })
  const ws = await app.client()
  await ws.subscribe('Game', 'g-1')
  const venue = 'North Oval '.repeat(40)
  // Marten's SaveChanges: the events appended and the projected document upserted, one transaction
  const play = async (version: number, doc: object): Promise<void> => {
    const { rows } = await db.query(reserveSequencesSql('events', 1))
    await run(db, [
      ...richAppendCommands(store, { streamId: 'g-1', streamType: 'game', currentVersion: version === 1 ? null : version - 1, sequences: [rows[0].nextval as string], events: [event('Scored', doc)] }),
      upsertCall(game, 'upsert', { id: 'g-1', doc })
    ])
  }
  await play(1, { venue, home: 3 })
  const first = [await ws.next(isNotification('Game', 'g-1')), await ws.next(isNotification('Game', 'g-1'))]
  t.same(first.map((m) => m.data.changeType).sort(), ['appended', 'created'], 'both: the document and the events')
  t.not(first[0].data.position, first[1].data.position, 'each with its own position (a client drops a repeated one)')
  await play(2, { venue, home: 10 })
  const second = [await ws.next(isNotification('Game', 'g-1')), await ws.next(isNotification('Game', 'g-1'))]
  const update = second.find((m) => m.data.changeType === 'updated')
  t.match(update?.data, { payloadType: 'delta', patch: [{ op: 'replace', path: '/home', value: 10 }] }, 'the events did not make the publisher forget the document: a patch')
})
