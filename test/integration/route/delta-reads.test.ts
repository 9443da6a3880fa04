/**
 * `delta` documents too large to ride in the NOTIFY are read back from the table when routed, and by then the row
 * may hold a later transaction's version. Such a read must never become the base of a patch labelled with the
 * earlier change's position: a client that subscribed with a snapshot (whose position is the row's transaction)
 * would apply the next patch to a document other than the one it was made from, and silently hold a wrong one.
 * Here clients subscribe with snapshots at random moments of a quick run of writes to one large document (from
 * several connections, so that reads back often find a later version), apply every patch they get, and must all
 * end holding the row the database holds.
 */
import t from 'tap'
import { isDeepStrictEqual } from 'node:util'
import { freshDatabase, martenTableSql, sqlClient } from '../../helpers/services.js'
import { startApp } from '../../helpers/app.js'
import type { Frame, TestClient } from '../../helpers/client.js'
import { until } from '../../helpers/wait.js'
import { follow } from '../../helpers/follow.js'

const WRITES = 300
const CLIENTS = 20

t.test('clients that start from a snapshot during quick writes of a large document all end on the database\'s row', async (t) => {
  const url = await freshDatabase(t, 'delta_reads')
  const sql = await sqlClient(t, url)
  await sql.query(martenTableSql('mt_doc_match'))
  const { app, client } = await startApp(t, {
    databases: [{ name: 'main', url }],
    entities: { Match: { access: 'public', payload: 'delta' } },
    // positions as the writer knows them (its transaction), which a snapshot's is too: no channel history
    history: { size: 0 }
  })
  // 20 KB: far over what a NOTIFY carries, so every change's document is read back from the table
  const blob = 'commentary '.repeat(2000)
  // each write adds a key to the row it updates (the latest version, under the row lock): a patch applied to
  // another version than its base leaves the client without keys it never gets back
  const write = async (db: typeof sql, n: number): Promise<string> => {
    const { rows: [row] } = await db.query(`INSERT INTO mt_doc_match (id, data) VALUES ('big', jsonb_build_object('n', $1::int, 'blob', $2::text, 'seen', jsonb_build_object('k' || $1, $1::int)))
      ON CONFLICT (id) DO UPDATE SET data = mt_doc_match.data || jsonb_build_object('n', $1::int, 'seen', (mt_doc_match.data->'seen') || jsonb_build_object('k' || $1, $1::int)),
        mt_version = gen_random_uuid() RETURNING txid_current()::text AS txid`, [n, blob])
    return 'n:' + String(row.txid)
  }
  await write(sql, 0)

  const first = await client()
  await first.subscribe('Match', 'big')
  const clients: TestClient[] = []
  for (let i = 0; i < CLIENTS; i++) clients.push(await client())
  const joins = clients.map(() => 1 + Math.floor(Math.random() * (WRITES - 1)))
  // writers on several connections: commits follow each other closely, so the router's read of a change often
  // finds a later one's version already
  const writers = [sql, ...await Promise.all([1, 2, 3].map(async () => await sqlClient(t, url)))]
  let issued = 0
  await Promise.all(writers.map(async (db) => {
    while (issued < WRITES) {
      const n = ++issued
      for (const [i, c] of clients.entries()) {
        if (joins[i] === n) c.send({ type: 'subscribe', id: 'snap', data: { entityType: 'Match', entityId: 'big', snapshot: true } })
      }
      await write(db, n)
    }
  }))
  // then a few paced writes, each read back before the next: patches again, from documents of their own version
  const everyone = [first, ...clients]
  let last = ''
  for (let n = WRITES + 1; n <= WRITES + 3; n++) {
    const position = await write(sql, n)
    t.ok(await until(() => first.messages.some((m) => m.data?.position === position), 10_000), `write ${n} delivered`)
    last = position
  }
  const { rows: [row] } = await sql.query('SELECT data FROM mt_doc_match WHERE id = \'big\'')
  const viewOf = (c: TestClient): ReturnType<typeof follow> => follow(c.messages.filter((m: Frame) => m.type === 'subscribed' || m.data?.entityId === 'big'))
  const arrived = await until(() => everyone.every((c) => viewOf(c).at === last), 30_000)
  t.ok(arrived, 'every client got up to the last write')
  const views = everyone.map(viewOf)
  const wrong = views.flatMap((view, i) => isDeepStrictEqual(view.document, row.data) ? [] : [{ client: i, joinedAt: i === 0 ? 0 : joins[i - 1], at: view.at, patches: view.delta }])
  t.same(wrong, [], `every client holds the row: ${everyone.length - wrong.length} of ${everyone.length} do`)
  t.same(views.map((v) => v.refused + v.failed), views.map(() => 0), 'every patch named the document held as its base, and applied')
  t.ok(views.every((v) => v.delta > 0), 'every client applied patches')
  const { router, deltas } = app.changefeed.stats()
  t.ok(router.documentReads >= WRITES, 'the documents were read back, not inlined')
  t.comment(`read back after a later write: ${deltas.stale} of ${WRITES}; patches made: ${deltas.patches}`)
})
