/**
 * What travels on an entity channel: one header line — the trigger time (epoch ms), the payload type, and the
 * W3C trace context of the publishing span ('-' without one) — then the frame every socket receives, unchanged.
 * JSON frames contain no raw newline, so the first '\n' ends the header.
 */
export interface Envelope {
  ts: number
  payloadType: string
  traceparent: string | null
  frame: string
}

export function wrap (ts: number, payloadType: string, traceparent: string | undefined, frame: string): string {
  return `${ts} ${payloadType} ${traceparent ?? '-'}\n${frame}`
}

export function unwrap (message: string): Envelope | null {
  const end = message.indexOf('\n')
  if (end < 0) return null
  const [ts, payloadType, traceparent] = message.slice(0, end).split(' ')
  return { ts: Number(ts), payloadType, traceparent: traceparent === '-' || traceparent === undefined ? null : traceparent, frame: message.slice(end + 1) }
}
