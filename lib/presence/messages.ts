/**
 * Presence on the bus: its messages travel on the entity's own channel, told from notifications by their first
 * bytes (a notification's envelope starts `cf1`, lib/route/envelope.ts). One header line, then the body:
 *
 *   pr1 m <instance> <version> <userId>   an instance's entry for a user; the body is its JSON, empty when removed
 *   pr1 s <instance> <userId>             a signal; the body is the frame every socket receives, unchanged
 *
 * The user id is URI-encoded (it holds no space then).
 */
import type { Entry } from './room.js'

export const MESSAGE = 'pr1 '

export type PresenceMessage =
  | { kind: 'member', instance: string, v: number, userId: string, entry: Entry | null }
  | { kind: 'signal', instance: string, userId: string, frame: string }

export function memberMessage (instance: string, userId: string, v: number, entry: Entry | null): string {
  return `${MESSAGE}m ${instance} ${v} ${encodeURIComponent(userId)}\n${entry === null ? '' : JSON.stringify(entry)}`
}

export function signalMessage (instance: string, userId: string, frame: string): string {
  return `${MESSAGE}s ${instance} ${encodeURIComponent(userId)}\n${frame}`
}

/** A presence message, or null when it is not one this version reads. */
export function readMessage (message: string): PresenceMessage | null {
  const end = message.indexOf('\n')
  if (end === -1 || !message.startsWith(MESSAGE)) return null
  const fields = message.slice(MESSAGE.length, end).split(' ')
  const body = message.slice(end + 1)
  try {
    if (fields[0] === 's' && fields.length === 3) return { kind: 'signal', instance: fields[1], userId: decodeURIComponent(fields[2]), frame: body }
    if (fields[0] !== 'm' || fields.length !== 4) return null
    const v = Number(fields[2])
    const entry = body === '' ? null : JSON.parse(body) as Entry
    if (!Number.isSafeInteger(v) || (entry !== null && (typeof entry.c !== 'number' || typeof entry.at !== 'number'))) return null
    if (entry !== null) entry.v = v
    return { kind: 'member', instance: fields[1], v, userId: decodeURIComponent(fields[3]), entry }
  } catch {
    return null
  }
}
