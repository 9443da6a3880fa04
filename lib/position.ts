/**
 * Positions. Outbox mode's `<epoch>:<n>` can be resumed with `since` and is ordered within its epoch; the others
 * (`n:<txid>` in notify mode, `p:<instance>:<n>` for a host's publish) only tell changes apart. The client SDK
 * restates the rule (lib/client/index.ts), being one module without imports.
 */

export function formatPosition (epoch: string, pos: number | string): string {
  return epoch + ':' + String(pos)
}

/** The parts of an outbox position; null for any other string. */
export function parsePosition (position: string): { epoch: string, pos: number } | null {
  const match = /^([0-9a-f]{8}):(\d{1,15})$/.exec(position)
  return match === null ? null : { epoch: match[1], pos: Number(match[2]) }
}

/** False only when both are outbox positions of one epoch and `position` is not later than `than`. */
export function isAfter (position: string | null, than: string | undefined): boolean {
  const a = position === null ? null : parsePosition(position)
  const b = than === undefined ? null : parsePosition(than)
  return a === null || b === null || a.epoch !== b.epoch || a.pos > b.pos
}
