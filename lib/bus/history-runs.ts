/**
 * What resumes have read of each channel's history lately, kept in this process, so that the next resume of the same
 * channel asks the broker only what came since (lib/bus/history-nats.ts: JetStream has no read of many messages at
 * once in the servers supported, so a history read is a round trip per message).
 *
 * A stored message never changes. Messages of one subject read one after another, each the next of the subject from
 * the one before, are a run with nothing between them (the reader checks nothing was removed meanwhile), extended
 * only from its last message.
 *
 * Bounded: a run keeps the subject's `size` last messages and none older than asked; the runs together at most
 * `maxBytes` (one run at most an eighth of it, its oldest messages dropped), the least recently used dropped first.
 */

/** A stored message of a subject, as a resume reads it. */
export interface Link {
  /** its sequence in the stream */
  seq: number
  /** its position: the one it names (a change carried on several channels), or its own */
  position: string
  /** a keep-alive's: the position it stands in for ('' for any other) */
  kept: string
  /** the message as it went out (with its position); null for a marker (a start, a keep-alive) */
  message: string | null
  /** when it was stored, ms since the epoch */
  time: number
}

/** what a link holds beyond its message and position, in bytes */
const LINK_OVERHEAD = 96

const linkBytes = (l: Link): number => LINK_OVERHEAD + 2 * (l.position.length + l.kept.length + (l.message?.length ?? 0))

/**
 * A run: its messages, oldest first, and how far back it is known: the subject held no other message from sequence
 * `reach` to its first (a read from a position's sequence finds the channel's copy a few messages on).
 */
export interface Run { links: readonly Link[], reach: number }

/** Whether `link` stands at `since`: its own position, or a keep-alive's for it. */
export const isAt = (link: Link, since: string): boolean => link.position === since || link.kept === since

export class HistoryRuns {
  private readonly runs = new Map<string, { links: Link[], reach: number, bytes: number }>()
  private held = 0

  constructor (private readonly maxBytes: number) {}

  /** bytes held */
  get bytes (): number { return this.held }

  /** The subject's run, without the messages stored before `oldest` (ms since the epoch). */
  get (subject: string, oldest: number): Run | undefined {
    const run = this.runs.get(subject)
    if (run === undefined) return undefined
    // most recently used last
    this.runs.delete(subject)
    this.runs.set(subject, run)
    const young = run.links.findIndex((l) => l.time >= oldest)
    if (young !== 0) this.put(subject, young < 0 ? [] : run.links.slice(young), Infinity)
    const kept = this.runs.get(subject)
    return kept === undefined ? undefined : { links: kept.links, reach: kept.reach }
  }

  /**
   * The subject's run is now `links` (of at most `size` messages, its last ones kept), known from `reach` (its first
   * message's sequence when not given, or when its first ones are not kept).
   */
  put (subject: string, links: readonly Link[], size: number, reach = links[0]?.seq ?? 0): void {
    this.drop(subject)
    const kept = links.length > size ? links.slice(links.length - size) : [...links]
    let bytes = LINK_OVERHEAD + 2 * subject.length + kept.reduce((n, l) => n + linkBytes(l), 0)
    while (kept.length > 0 && bytes > this.maxBytes / 8) bytes -= linkBytes(kept.shift()!)
    if (kept.length === 0) return
    this.runs.set(subject, { links: kept, reach: kept[0] === links[0] ? Math.min(reach, kept[0].seq) : kept[0].seq, bytes })
    this.held += bytes
    for (const [oldest, run] of this.runs) {
      if (this.held <= this.maxBytes) break
      this.runs.delete(oldest)
      this.held -= run.bytes
    }
  }

  clear (): void {
    this.runs.clear()
    this.held = 0
  }

  drop (subject: string): void {
    const run = this.runs.get(subject)
    if (run === undefined) return
    this.runs.delete(subject)
    this.held -= run.bytes
  }
}
