/**
 * What travels on an entity channel: one header line, then the frame every socket receives, unchanged. The header's
 * fields, space-separated, '-' for none: the change's time (epoch ms), the payload type, the W3C trace context of
 * the publishing span, the change's position, its tenant (URI-encoded), and for owner types the owner the document
 * names ('o:<owner, URI-encoded>', 'o' for none; absent for other types). JSON frames contain no raw newline, so
 * the first '\n' ends the header. A `delta` type's change (payload type `delta`) may carry a second frame, its patch:
 * then the header ends with 'b:<the patch's base position, URI-encoded>' and the patch frame follows the full one
 * after a '\n'. A change captured from PostgreSQL ends the header with 'x:<its transaction id>', which tells a
 * subscriber whose snapshot saw it that it has it already.
 */
import type { DeltaFrame } from './deltas.js'

export interface Envelope {
  ts: number
  payloadType: string
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
}

export function wrap (envelope: Omit<Envelope, 'traceparent' | 'position' | 'tenantId'> & Partial<Envelope>): string {
  const { ts, payloadType, traceparent, position, tenantId, owner, frame, delta, txid } = envelope
  const ownerField = owner === undefined ? '' : owner === null ? ' o' : ' o:' + encodeURIComponent(owner)
  const tenantField = tenantId === undefined || tenantId === null ? '-' : encodeURIComponent(tenantId)
  const txidField = txid === undefined ? '' : ' x:' + txid
  const header = `${ts} ${payloadType} ${traceparent ?? '-'} ${position ?? '-'} ${tenantField}${ownerField}${txidField}`
  return delta === undefined ? `${header}\n${frame}` : `${header} b:${encodeURIComponent(delta.base)}\n${frame}\n${delta.frame}`
}

const orNull = (field: string | undefined): string | null => field === '-' || field === undefined ? null : field

export function unwrap (message: string): Envelope | null {
  const end = message.indexOf('\n')
  if (end < 0) return null
  const [ts, payloadType, traceparent, position, tenant, ...optional] = message.slice(0, end).split(' ')
  const tenantId = orNull(tenant)
  const owner = optional.find((field) => field[0] === 'o')
  const base = optional.find((field) => field.startsWith('b:'))
  const txid = optional.find((field) => field.startsWith('x:'))
  // a header that wrap() did not write (another publisher on the bus) can hold bad percent-encoding: a URIError
  // thrown here would escape the bus client's message handler (ioredis rethrows it: the process exits)
  try {
    const envelope: Envelope = {
      ts: Number(ts),
      payloadType,
      traceparent: orNull(traceparent),
      position: orNull(position),
      tenantId: tenantId === null ? null : decodeURIComponent(tenantId),
      frame: message.slice(end + 1)
    }
    if (owner !== undefined) envelope.owner = owner === 'o' ? null : decodeURIComponent(owner.slice(2))
    if (txid !== undefined) envelope.txid = txid.slice(2)
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
