/**
 * What a listener may receive besides a change (lib/capture/coalesce.ts reads those): the event trigger's notes
 * about new tables, the transaction a signed payload names, and a trigger's unsigned note that its writer may not
 * announce changes (sql/changefeed.sql).
 */

/**
 * What the event triggers tell the listener about a table while it runs: the capture trigger was put on it (at the
 * end of a rebuild: `oid`, the table's, and `fresh`, whether in the transaction that made it), or could not be; it
 * was dropped; or it is the table of tenant databases, which changed.
 */
export interface DdlNote { ddl: 'installed' | 'failed' | 'dropped' | 'registry', s: string, t: string, error?: string, fresh?: boolean, oid?: string }

const DDL_NOTES = new Set(['installed', 'failed', 'dropped', 'registry'])

/** The transaction id a signed payload names (changes and DDL notes both carry it); null when it has none. */
export function transactionOf (row: unknown): string | null {
  const x = row !== null && typeof row === 'object' ? (row as { x?: unknown }).x : undefined
  return typeof x === 'number' || (typeof x === 'string' && /^\d{1,20}$/.test(x)) ? String(x) : null
}

/** `{"role": <name>, "unannounced": "<relation oid>"}`, as changefeed_pass sends it; null for anything else. */
export function unannouncedNote (payload: string): { role: string } | null {
  if (!payload.startsWith('{"role"') && !payload.startsWith('{"unannounced"')) return null
  try {
    const note = JSON.parse(payload) as { unannounced?: unknown, role?: unknown }
    // an oid is text in JSON
    return typeof note.unannounced === 'string' && typeof note.role === 'string' ? { role: note.role.slice(0, 64) } : null
  } catch {
    return null
  }
}

export const isDdlNote = (value: unknown): value is DdlNote => value !== null && typeof value === 'object' &&
  DDL_NOTES.has((value as DdlNote).ddl) && typeof (value as DdlNote).s === 'string' && typeof (value as DdlNote).t === 'string'
