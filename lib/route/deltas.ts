/**
 * `delta` payloads, on the publisher: the last document published of each entity is kept (a bounded cache,
 * `limits.deltaCacheBytes`), and the next change of the entity gets, besides its full frame, a `delta` frame: the
 * patch from that document, with its position as `basePosition`. Once per change, for every socket; delivery
 * (lib/ws/connection.ts) sends the patch only to sockets whose last frame of the entity was the base.
 *
 * The cache is what the patch is proven against: a document not in it (evicted, a new publisher after a failover,
 * the first change seen) means no patch, and so does a patch not smaller than the full frame.
 */
import { encodeNotification, type NotificationFields } from '../protocol/index.js'
import { diffDocuments } from './diff.js'
import type { EntityType } from '../entities.js'
import type { Notice } from './notices.js'

/** A change's delta frame and the position of the document its patch applies to. */
export interface DeltaFrame {
  frame: string
  base: string
}

interface Kept {
  position: string
  document: unknown
  /** the JSON size of the document (its full frame's): what the cache counts */
  bytes: number
}

export interface DeltaCounters {
  /** delta frames made */
  patches: number
  /** changes of delta types that had no base: not kept, or the first of the entity */
  misses: number
  /** changes whose patch was not smaller than the document: full only */
  larger: number
  /** documents dropped from the cache to stay within deltaCacheBytes */
  evicted: number
  /** changes whose document was read back after a later write of the row: full, and no base for the next patch */
  stale: number
}

export class Deltas {
  readonly counters: DeltaCounters = { patches: 0, misses: 0, larger: 0, evicted: 0, stale: 0 }
  /** by entity key (its own channel); Map order is the order of last change: the first is evicted first */
  private readonly kept = new Map<string, Kept>()
  private keptBytes = 0

  constructor (private readonly maxBytes: number) {}

  /**
   * A `delta` type's notice with a document: its payload type on the bus is `delta` (delivery then tracks what each
   * socket was sent), and it carries the patch frame when there is one. `key` is the entity's own channel.
   */
  noticeOf (entity: EntityType, key: string, notice: Notice): Notice & { delta?: DeltaFrame } {
    // events appended to the entity's stream leave its document (and the patch base) as it was
    if (entity.payload !== 'delta' || notice.payloadType === 'events') return notice
    if (notice.payloadType !== 'full' || notice.fields === undefined) {
      // gone by the time it was read: the next change is full
      this.forget(key)
      return notice
    }
    if (notice.stale === true) {
      // a later version than its position says: whole, without a patch, and no base for one (delivery still
      // records what each socket was sent, so no patch goes to a socket holding something else)
      this.stale(key)
      return { ...notice, payloadType: 'delta' }
    }
    const delta = this.frameOf(key, notice.fields, notice.document, notice.frame) ?? undefined
    return { ...notice, payloadType: 'delta', delta }
  }

  /** JSON bytes of the documents kept */
  get bytes (): number {
    return this.keptBytes
  }

  /**
   * The delta frame of one change of a `delta` type, or null when it goes out full only. `document` is the change's
   * (undefined when it has none: deleted, or gone); `full` its full frame. Keeps the document as the base of the
   * entity's next change. Changes of one entity must come in their order (the router routes them one at a time).
   */
  frameOf (key: string, fields: Omit<NotificationFields, 'payloadType'>, document: unknown, full: string): DeltaFrame | null {
    const before = this.kept.get(key)
    const position = fields.position ?? null
    this.forget(key)
    if (document === undefined || position === null) return null
    this.keep(key, { position, document, bytes: full.length })
    // the same position again (a retry, a failover's republish): its document may have been read anew; full
    if (before === undefined || before.position === position) {
      this.counters.misses++
      return null
    }
    const frame = encodeNotification({ ...fields, payloadType: 'delta', basePosition: before.position, patch: diffDocuments(before.document, document) })
    if (frame.length >= full.length) {
      this.counters.larger++
      return null
    }
    this.counters.patches++
    return { frame, base: before.position }
  }

  /**
   * A change whose document is a later version than its position: labelled with that position, it would be the
   * base of a patch a client holding the change's own version (a snapshot at it) applies to the wrong document. It
   * goes out full, and the entity's next change too.
   */
  stale (key: string): void {
    this.counters.stale++
    this.forget(key)
  }

  /** The entity's document is not known any more (nobody watched a change of it). */
  forget (key: string): void {
    const kept = this.kept.get(key)
    if (kept === undefined) return
    this.kept.delete(key)
    this.keptBytes -= kept.bytes
  }

  private keep (key: string, kept: Kept): void {
    if (kept.bytes > this.maxBytes) return
    this.kept.set(key, kept)
    this.keptBytes += kept.bytes
    for (const [oldest, { bytes }] of this.kept) {
      if (this.keptBytes <= this.maxBytes) break
      this.kept.delete(oldest)
      this.keptBytes -= bytes
      this.counters.evicted++
    }
  }
}
