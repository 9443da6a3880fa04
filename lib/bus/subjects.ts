/** A channel as a NATS subject: one token, nothing NATS would read as a separator or wildcard (escaped as %xx). */
export function subjectOf (channel: string): string {
  return channel.replace(/[%.*>\s]/g, (c) => '%' + c.charCodeAt(0).toString(16).padStart(2, '0'))
}
