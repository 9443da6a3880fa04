/**
 * Origin tagging for collaborative editing: a writer tags its transaction, the notification of every change it makes
 * carries the tag as `origin`, and the editor that wrote can recognise (or skip) its own echo while its other tabs
 * and other users still get the change.
 */

/** Anything with a `query` method: a `pg` client, the client @fastify/postgres hands to `transact`. */
export interface Queryable {
  query(text: string, params?: unknown[]): Promise<unknown>
}

/**
 * Tags the current transaction's changes with `origin` (`SET LOCAL changefeed.origin`). Call it inside the
 * transaction, before the writes:
 *
 *     await fastify.pg.league.transact(async (client) => {
 *       await tagOrigin(client, request.headers['x-editor'])
 *       await client.query('UPDATE mt_doc_team SET data = $2 WHERE id = $1', [id, team])
 *     })
 */
export async function tagOrigin (client: Queryable, origin: string): Promise<void> {
  await client.query("SELECT set_config('changefeed.origin', $1, true)", [origin.slice(0, 200)])
}
