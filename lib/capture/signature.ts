/**
 * Which NOTIFY payloads the capture triggers sent, and sent now. Any role may NOTIFY on any channel, so every
 * payload carries the hex HMAC-SHA-256 of its body under the key in `changefeed_key` (sql/changefeed.sql), which
 * only the changefeed objects' owner can read. Any role may also LISTEN and send a signed payload it saw once more,
 * so a signed payload is believed only once, and only while its transaction could still legitimately reach this
 * listener:
 *
 * - PostgreSQL delivers a transaction's NOTIFYs at its commit to the sessions listening then. A snapshot taken just
 *   before LISTEN tells which transactions were over by then: their NOTIFYs went out before this listener existed,
 *   so one arriving now was sent again (after a restart, a failover, a reconnect).
 * - While it listens, the listener takes a snapshot at every probe. Once it has been idle since (one probe later),
 *   every NOTIFY of a transaction that snapshot saw as over has arrived; from then on such a payload is refused
 *   too, and the payloads remembered against repeats are only those of transactions that might still send.
 *
 * The transaction id in a payload is set by the owner's function (changefeed_announce), not by the writer.
 */
import { createHmac, timingSafeEqual } from 'node:crypto'
import { Visibility } from './visibility.js'
import { transactionOf } from './payloads.js'
import type { ListenSession } from './database.js'
import { CaptureKeyError } from '../errors.js'

/** hex characters of the HMAC-SHA-256 that precede every signed NOTIFY payload */
const SIGNATURE_LENGTH = 64
/** without probes nothing tells when a transaction is over: at most this many signatures are remembered */
const MAX_REMEMBERED = 200_000

export type Verdict = 'fresh' | 'replayed'

/** What a payload is: not signed, signed but without a transaction, seen before (or too late), or to believe. */
export type Checked = { kind: 'unsigned' } | { kind: 'malformed' | Verdict, row: unknown, bytes: number }

/** The signing key, read on every connection, so a reinstall is picked up. */
export async function readNotifyKey (session: ListenSession, database: string): Promise<Buffer> {
  try {
    const [row] = await session.query<{ key: Uint8Array }>('SELECT key FROM changefeed_key')
    if (row === undefined) throw new Error('the table is empty')
    return Buffer.from(row.key)
  } catch (err) {
    throw new CaptureKeyError(database, (err as Error).message)
  }
}

export class NotifyVerifier {
  private key: Buffer | null = null
  /** transactions over before this: their payloads are refused */
  private floor: Visibility | null = null
  /** the latest probe's snapshot: the floor from the next probe on */
  private next: Visibility | null = null
  /** signatures believed (half of each) → their transaction, oldest first */
  private readonly seen = new Map<string, string>()

  /** The key, read on every connection, so a reinstall is picked up. */
  useKey (key: Buffer): void {
    this.key = key
  }

  /** Listening starts: `snapshot` was taken just before LISTEN. */
  listening (snapshot: string): void {
    this.floor = new Visibility(snapshot)
    this.next = null
    this.seen.clear()
  }

  /** A probe's snapshot, taken while listening: the floor moves to the previous one. */
  advance (snapshot: string): void {
    if (this.next !== null) {
      const floor = this.floor = this.next
      for (const [signature, txid] of this.seen) if (floor.saw(txid)) this.seen.delete(signature)
    }
    this.next = new Visibility(snapshot)
  }

  /** The body of a payload the capture triggers signed; null for anything else. */
  verified (payload: string): string | null {
    if (this.key === null || payload.length <= SIGNATURE_LENGTH) return null
    const body = payload.slice(SIGNATURE_LENGTH)
    // the hex exactly as the trigger writes it (lower case): a signature in other letters is the same bytes, and would
    // pass for another payload where repeats are recognised by it
    const expected = Buffer.from(createHmac('sha256', this.key).update(body, 'utf8').digest('hex'), 'latin1')
    const given = Buffer.from(payload.slice(0, SIGNATURE_LENGTH), 'utf8')
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return null
    return body
  }

  /** A payload as it came: verified, parsed and admitted. */
  check (payload: string): Checked {
    const body = this.verified(payload)
    if (body === null) return { kind: 'unsigned' }
    let row: unknown
    try {
      row = JSON.parse(body)
    } catch {
      row = null
    }
    const txid = transactionOf(row)
    return { kind: txid === null ? 'malformed' : this.admit(payload, txid), row, bytes: body.length }
  }

  /** Whether a verified payload of transaction `txid` may be believed now (its first arrival, in time). */
  admit (payload: string, txid: string): Verdict {
    const signature = payload.slice(0, 32)
    if (this.floor?.saw(txid) === true || this.seen.has(signature)) return 'replayed'
    this.seen.set(signature, txid)
    if (this.seen.size > MAX_REMEMBERED) this.seen.delete(this.seen.keys().next().value as string)
    return 'fresh'
  }
}
