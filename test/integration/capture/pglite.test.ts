/** The same capture code on the embedded PGlite: triggers, coalescing and full payloads, in process. */
import t from 'tap'
import { startApp } from '../../helpers/app.js'
import { isNotification } from '../../helpers/client.js'
import { martenTableSql } from '../../helpers/services.js'

const { app, client } = await startApp(t, {
  databases: [{ name: 'main', url: 'pglite://memory' }],
  capture: { channel: 'foundry:db_changes' },
  entities: { RugbyGameState: { access: 'public', payload: 'full' }, Team: { access: 'public' } }
})
const db = app.changefeed.databases.get('main')!
await db.execScript(martenTableSql('mt_doc_rugbygamestate'))
await db.execScript(martenTableSql('mt_doc_team'))
await app.changefeed.rescan()

t.test('changes on PGlite reach watchers, coalesced per transaction', async (t) => {
  const ws = await client()
  await ws.subscribe('RugbyGameState', 'match-1')
  await ws.subscribe('Team', 'team-1')
  await db.query('INSERT INTO mt_doc_rugbygamestate (id, data) VALUES (\'match-1\', \'{"homeScore":0}\')')
  t.match((await ws.next(isNotification('RugbyGameState', 'match-1'))).data, { changeType: 'created', payloadType: 'full', payload: { homeScore: 0 } })

  await db.execScript(`
    UPDATE mt_doc_rugbygamestate SET data = '{"homeScore":5}' WHERE id = 'match-1';
    UPDATE mt_doc_rugbygamestate SET data = '{"homeScore":7}' WHERE id = 'match-1';
    INSERT INTO mt_doc_team (id, data) VALUES ('team-1', '{}');`)
  t.match((await ws.next(isNotification('RugbyGameState', 'match-1'))).data, { changeType: 'updated', payload: { homeScore: 7 } }, 'the last state')
  t.equal((await ws.next(isNotification('Team', 'team-1'))).data.changeType, 'created')
  // a marker: a change committed later, to another entity this socket watches, arrives after anything more
  await ws.subscribe('Team', 'marker')
  await db.query('INSERT INTO mt_doc_team (id, data) VALUES (\'marker\', \'{}\')')
  await ws.next(isNotification('Team', 'marker'))
  t.same(ws.messages.filter((m) => m.type === 'notification'), [], 'one notification per entity')

  await db.query('UPDATE mt_doc_team SET mt_deleted = true WHERE id = \'team-1\'')
  t.equal((await ws.next(isNotification('Team', 'team-1'))).data.changeType, 'deleted', 'soft delete')
  t.equal(app.changefeed.stats().listeners.main.state, 'listening')
})
