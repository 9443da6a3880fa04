/**
 * Which NOTIFY payloads the capture triggers sent. Any role may NOTIFY on any channel, so every payload carries
 * the hex HMAC-SHA-256 of its body under the key in `changefeed_key` (sql/changefeed.sql), which only the
 * trigger functions' owner can read. Any role may also LISTEN and send a signed payload it saw once more: a
 * signature seen lately is refused too.
 */
import { createHmac, timingSafeEqual } from 'node:crypto'

/** hex characters of the HMAC-SHA-256 that precede every signed NOTIFY payload */
const SIGNATURE_LENGTH = 64
/** how many signatures are remembered against replays */
const SEEN_SIGNATURES = 50_000

export class NotifyVerifier {
  /** the latest signatures (half of each, oldest first) */
  private readonly seen = new Set<string>()
  private key: Buffer | null = null

  /** The key, read on every connection, so a reinstall is picked up. */
  useKey (key: Buffer): void {
    this.key = key
  }

  /** The body of a payload the capture triggers signed and that was not seen before; null for anything else. */
  verified (payload: string): string | null {
    if (this.key === null || payload.length <= SIGNATURE_LENGTH) return null
    const body = payload.slice(SIGNATURE_LENGTH)
    const expected = createHmac('sha256', this.key).update(body, 'utf8').digest()
    const given = Buffer.from(payload.slice(0, SIGNATURE_LENGTH), 'hex')
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return null
    const seen = payload.slice(0, 32)
    if (this.seen.has(seen)) return null
    this.seen.add(seen)
    if (this.seen.size > SEEN_SIGNATURES) this.seen.delete(this.seen.values().next().value as string)
    return body
  }
}
