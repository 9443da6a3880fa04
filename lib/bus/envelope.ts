/**
 * What travels on an entity channel: one header line — the trigger time (epoch ms), the payload type, the W3C
 * trace context of the publishing span ('-' without one), the change's position ('-' without one) and, for owner
 * types, the owner the document names ('o:<owner, URI-encoded>', 'o' when it names none; absent otherwise) — then
 * the frame every socket receives, unchanged. JSON frames contain no raw newline, so the first '\n' ends the header.
 */
export interface Envelope {
  ts: number
  payloadType: string
  traceparent: string | null
  position: string | null
  /** owner types with full payloads: the owner the delivered document names (null: none); undefined otherwise */
  owner?: string | null
  frame: string
}

export function wrap (ts: number, payloadType: string, traceparent: string | undefined, frame: string, position: string | null = null, owner?: string | null): string {
  const ownerField = owner === undefined ? '' : owner === null ? ' o' : ' o:' + encodeURIComponent(owner)
  return `${ts} ${payloadType} ${traceparent ?? '-'} ${position ?? '-'}${ownerField}\n${frame}`
}

const orNull = (field: string | undefined): string | null => field === '-' || field === undefined ? null : field

export function unwrap (message: string): Envelope | null {
  const end = message.indexOf('\n')
  if (end < 0) return null
  const [ts, payloadType, traceparent, position, owner] = message.slice(0, end).split(' ')
  const envelope: Envelope = { ts: Number(ts), payloadType, traceparent: orNull(traceparent), position: orNull(position), frame: message.slice(end + 1) }
  if (owner !== undefined) envelope.owner = owner === 'o' ? null : decodeURIComponent(owner.slice(2))
  return envelope
}
