/**
 * What travels on a channel of the bus: one header line, then the frame every socket receives, unchanged. The
 * header's fields, space-separated, '-' for none:
 *
 *   cf1              the version of this layout: a message of another one is not read (the fanout resyncs its watchers)
 *   n | r            what it carries: a notification, or a resync its watchers are owed (a change given up on)
 *   ts               the change's time (epoch ms)
 *   payloadType      minimal, full, events or delta ('-' for a resync)
 *   traceparent      the W3C trace context of the publishing span
 *   position         the change's position
 *   tenant           its tenant (URI-encoded)
 *   o:<owner> | o    owner types: the owner the document names (URI-encoded), or none; absent for other types
 *   x:<txid>         a change captured from PostgreSQL: its transaction (a snapshot that saw it has it already)
 *   b:<base>         a `delta` type's change with a patch: the position the patch applies to (URI-encoded)
 *
 * JSON frames contain no raw newline, so the first '\n' ends the header. With `b:` the patch frame follows the full
 * one after a second '\n'. On a channel that keeps a history the bus puts the channel's position before the header
 * (`@<epoch>:<offset> `, lib/bus/history.ts): the position its frames say there.
 */
import type { DeltaFrame } from './deltas.js'
import type { PayloadTypeName } from '../protocol/index.js'
import { splitPosition } from '../bus/history.js'

const VERSION = 'cf1'

export interface Envelope {
  kind: 'notification' | 'resync'
  ts: number
  /** null for a resync */
  payloadType: PayloadTypeName | null
  traceparent: string | null
  position: string | null
  /** tenanted types: the entity's tenant */
  tenantId: string | null
  /** owner types with full payloads: the owner the delivered document names (null: none); undefined otherwise */
  owner?: string | null
  frame: string
  /** `delta` types: the change's patch frame, when it has one, and the position of the document it applies to */
  delta?: DeltaFrame
  /** changes captured from PostgreSQL: the writer's transaction id */
  txid?: string
  /** a channel with history: the message's position on it (`position` is the change's, the same on every channel) */
  at?: string
}

type Notification = Omit<Envelope, 'kind' | 'payloadType' | 'traceparent' | 'position' | 'tenantId'> & { payloadType: PayloadTypeName } & Partial<Envelope>

/** A notification's message. */
export function wrap (envelope: Notification): string {
  const { ts, payloadType, traceparent, position, tenantId, owner, frame, delta, txid } = envelope
  const ownerField = owner === undefined ? '' : owner === null ? ' o' : ' o:' + encodeURIComponent(owner)
  const tenantField = tenantId === undefined || tenantId === null ? '-' : encodeURIComponent(tenantId)
  const txidField = txid === undefined ? '' : ' x:' + txid
  const header = `${VERSION} n ${ts} ${payloadType} ${traceparent ?? '-'} ${position ?? '-'} ${tenantField}${ownerField}${txidField}`
  return delta === undefined ? `${header}\n${frame}` : `${header} b:${encodeURIComponent(delta.base)}\n${frame}\n${delta.frame}`
}

/** A resync's message: its watchers, wherever they are, are owed the frame. */
export function wrapResync (frame: string, ts = Date.now()): string {
  return `${VERSION} r ${ts} - - - -\n${frame}`
}

const orNull = (field: string | undefined): string | null => field === '-' || field === undefined ? null : field

/** The message read back; null for one this layout did not write (another version, another publisher on the bus). */
export function unwrap (sent: string): Envelope | null {
  const { position: at, message } = splitPosition(sent)
  const end = message.indexOf('\n')
  if (end < 0) return null
  const [version, kind, ts, payloadType, traceparent, position, tenant, ...optional] = message.slice(0, end).split(' ')
  if (version !== VERSION || (kind !== 'n' && kind !== 'r')) return null
  const tenantId = orNull(tenant)
  const owner = optional.find((field) => field[0] === 'o')
  const base = optional.find((field) => field.startsWith('b:'))
  const txid = optional.find((field) => field.startsWith('x:'))
  // a header that wrap() did not write can hold bad percent-encoding: a URIError thrown here would escape the bus
  // client's message handler (ioredis rethrows it: the process exits)
  try {
    const envelope: Envelope = {
      kind: kind === 'n' ? 'notification' : 'resync',
      ts: Number(ts),
      payloadType: orNull(payloadType) as PayloadTypeName | null,
      traceparent: orNull(traceparent),
      position: orNull(position),
      tenantId: tenantId === null ? null : decodeURIComponent(tenantId),
      frame: message.slice(end + 1)
    }
    if (owner !== undefined) envelope.owner = owner === 'o' ? null : decodeURIComponent(owner.slice(2))
    if (txid !== undefined) envelope.txid = txid.slice(2)
    if (at !== null) envelope.at = at
    const second = base === undefined ? -1 : envelope.frame.indexOf('\n')
    if (base !== undefined && second >= 0) {
      envelope.delta = { frame: envelope.frame.slice(second + 1), base: decodeURIComponent(base.slice(2)) }
      envelope.frame = envelope.frame.slice(0, second)
    }
    return envelope
  } catch {
    return null
  }
}
