/**
 * Marten event streams as a source: events appended through Marten-shaped SQL (mt_events, mt_streams) become one
 * `appended` notification per stream per transaction, with the events in version order.
 */
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { freshDatabase, sqlClient } from '../../helpers/services.js'
import { startApp } from '../../helpers/app.js'
import { isNotification } from '../../helpers/client.js'

const url = await freshDatabase(t, 'events')
const sql = await sqlClient(t, url)
await sql.query(`
  CREATE TABLE mt_streams (id uuid PRIMARY KEY, type varchar, version bigint, timestamp timestamptz DEFAULT now() NOT NULL,
    snapshot jsonb, snapshot_version integer, created timestamptz DEFAULT now() NOT NULL, tenant_id varchar DEFAULT '*DEFAULT*', is_archived bool DEFAULT false);
  CREATE TABLE mt_events (seq_id bigserial PRIMARY KEY, id uuid NOT NULL, stream_id uuid REFERENCES mt_streams(id) ON DELETE CASCADE,
    version bigint NOT NULL, data jsonb NOT NULL, type varchar(500) NOT NULL, timestamp timestamptz DEFAULT now() NOT NULL,
    tenant_id varchar DEFAULT '*DEFAULT*', mt_dotnet_type varchar, is_archived bool DEFAULT false, UNIQUE (stream_id, version));`)

const { app, client } = await startApp(t, {
  databases: [{ name: 'ballr', url }],
  capture: { channel: 'foundry:db_changes', events: { enabled: true, types: { match_events: 'RugbyGameState' } } },
  entities: { RugbyGameState: { access: 'public', payload: 'full' }, Team: { access: 'public' }, Secret: { access: 'admin' } }
})

/** Appends events to a stream in one transaction, the way Marten does (stream row, then event rows). */
async function append (streamId: string, type: string, events: Array<{ type: string, data: object }>, from = 1): Promise<void> {
  await sql.query('BEGIN')
  await sql.query(`INSERT INTO mt_streams (id, type, version) VALUES ($1, $2, $3)
    ON CONFLICT (id) DO UPDATE SET version = excluded.version, timestamp = now()`, [streamId, type, from + events.length - 1])
  for (const [i, e] of events.entries()) {
    await sql.query('INSERT INTO mt_events (id, stream_id, version, data, type) VALUES ($1, $2, $3, $4, $5)', [randomUUID(), streamId, from + i, JSON.stringify(e.data), e.type])
  }
  await sql.query('COMMIT')
}

t.test('one appended notification per stream per transaction, events in version order', async (t) => {
  const stream = randomUUID()
  const ws = await client()
  await ws.subscribe('RugbyGameState', stream)
  await append(stream, 'match_events', [
    { type: 'try_scored', data: { team: 'home', points: 5 } },
    { type: 'conversion_kicked', data: { team: 'home', points: 2 } },
    { type: 'penalty_kicked', data: { team: 'away', points: 3 } }
  ])
  const n = await ws.next(isNotification('RugbyGameState', stream))
  t.match(n.data, { changeType: 'appended', payloadType: 'events', version: '3' })
  t.same(n.data.payload.map((e: { type: string, version: number }) => [e.version, e.type]), [[1, 'try_scored'], [2, 'conversion_kicked'], [3, 'penalty_kicked']])
  t.same(n.data.payload[0].data, { team: 'home', points: 5 })
  // a marker: a later transaction on another stream this socket watches arrives after anything more of this one
  const marker = randomUUID()
  await ws.subscribe('RugbyGameState', marker)
  await append(marker, 'match_events', [{ type: 'kick_off', data: {} }])
  await ws.next(isNotification('RugbyGameState', marker))
  t.same(ws.messages.filter(isNotification('RugbyGameState', stream)), [], 'exactly one')

  await append(stream, 'match_events', [{ type: 'full_time', data: { note: 'x'.repeat(9000) } }], 4)
  const big = await ws.next(isNotification('RugbyGameState', stream))
  t.equal(big.data.payload[0].version, 4)
  t.equal(big.data.payload[0].data.note.length, 9000, 'an event too large for NOTIFY is read from mt_events')
})

t.test('stream types match entity names without a mapping; unknown ones are ignored', async (t) => {
  const ws = await client()
  const team = randomUUID()
  const other = randomUUID()
  await ws.subscribe('Team', team)
  await append(other, 'Ballr.Domain.Unmapped, Ballr', [{ type: 'x', data: {} }])
  await append(team, 'Ballr.Domain.Team, Ballr', [{ type: 'team_renamed', data: { name: 'Sharks' } }])
  t.match((await ws.next(isNotification('Team', team))).data, { changeType: 'appended', payload: [{ type: 'team_renamed' }] })
  t.ok((app.changefeed.stats().dropped.unknown_stream_type ?? 0) >= 1, 'the unmapped stream counted as dropped, by reason')
})

t.test('authorization is the aggregate type\'s', async (t) => {
  const ws = await client()
  t.match(await ws.subscribe('Secret', randomUUID()), { type: 'subscription_error', data: { code: 'unauthenticated' } })
})
