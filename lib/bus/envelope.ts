/**
 * What travels on an entity channel: one header line, then the frame every socket receives, unchanged. The header's
 * fields, space-separated, '-' for none: the change's time (epoch ms), the payload type, the W3C trace context of
 * the publishing span, the change's position, its tenant (URI-encoded), and for owner types the owner the document
 * names ('o:<owner, URI-encoded>', 'o' for none; absent for other types). JSON frames contain no raw newline, so
 * the first '\n' ends the header.
 */
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
}

export function wrap (envelope: Omit<Envelope, 'traceparent' | 'position' | 'tenantId'> & Partial<Envelope>): string {
  const { ts, payloadType, traceparent, position, tenantId, owner, frame } = envelope
  const ownerField = owner === undefined ? '' : owner === null ? ' o' : ' o:' + encodeURIComponent(owner)
  const tenantField = tenantId === undefined || tenantId === null ? '-' : encodeURIComponent(tenantId)
  return `${ts} ${payloadType} ${traceparent ?? '-'} ${position ?? '-'} ${tenantField}${ownerField}\n${frame}`
}

const orNull = (field: string | undefined): string | null => field === '-' || field === undefined ? null : field

export function unwrap (message: string): Envelope | null {
  const end = message.indexOf('\n')
  if (end < 0) return null
  const [ts, payloadType, traceparent, position, tenant, owner] = message.slice(0, end).split(' ')
  const tenantId = orNull(tenant)
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
    return envelope
  } catch {
    return null
  }
}
