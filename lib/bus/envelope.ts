/**
 * What travels on an entity channel: one header line — the trigger time (epoch ms), the payload type, the W3C
 * trace context of the publishing span ('-' without one) and the change's position ('-' without one) — then the
 * frame every socket receives, unchanged. JSON frames contain no raw newline, so the first '\n' ends the header.
 */
export interface Envelope {
  ts: number
  payloadType: string
  traceparent: string | null
  position: string | null
  frame: string
}

export function wrap (ts: number, payloadType: string, traceparent: string | undefined, frame: string, position: string | null = null): string {
  return `${ts} ${payloadType} ${traceparent ?? '-'} ${position ?? '-'}\n${frame}`
}

const orNull = (field: string | undefined): string | null => field === '-' || field === undefined ? null : field

export function unwrap (message: string): Envelope | null {
  const end = message.indexOf('\n')
  if (end < 0) return null
  const [ts, payloadType, traceparent, position] = message.slice(0, end).split(' ')
  return { ts: Number(ts), payloadType, traceparent: orNull(traceparent), position: orNull(position), frame: message.slice(end + 1) }
}
