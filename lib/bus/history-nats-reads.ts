/**
 * How the NATS history (lib/bus/history-nats.ts) reads a channel's past for a resume. JetStream's direct get reads one
 * message a request (the servers supported have no batched get), so a resume that walked the subject cost a round
 * trip per message, and resumes queued behind each other under load. Here:
 *
 * - what is stored now (the last gap marked, the subject's last message, what follows the run read before) is asked
 *   in one round of requests, shared by every resume of the subject that came before the round began (so each sees
 *   all that was stored before it asked);
 * - the messages are taken from the run this process read before (lib/bus/history-runs.ts), extended from its last
 *   message; a position outside it is read from JetStream, and the run kept.
 *
 * What JetStream removes goes oldest first (the subject's size, the stream's age) or all at once (a reset purges the
 * subject): messages read one after another are all still there, nothing between them removed, when the first of
 * them is still stored after the reads, which each read of a run checks last. A gap's marker ages out too, while a
 * run may hold older messages than JetStream still does: the last gap of each stream seen is kept, and a run serves
 * only messages younger than half the history's ttl (a gap marked after one but never seen here then is still
 * stored when it is read, while this clock and the server's differ by less than that half).
 */
import { ErrorCode, NatsError, type JetStreamManager, type StoredMsg } from 'nats'
import { withPosition, type HistoryLimits } from './history.js'
import { HistoryRuns, isAt, type Link, type Run } from './history-runs.js'

export const POSITION = 'Changefeed-Position'
export const GAP = '$gap'
/** the header of a history's start (`head`): a message that is none */
export const START = 'Changefeed-Start'
/**
 * the header of a quiet channel's keep-alive (`keep`), naming the channel's position when it was stored: nothing
 * came between. Messages age out (`max_age`) however long a channel is watched; a keep-alive stands in for the last.
 */
export const KEPT = 'Changefeed-Kept'
/** a change carried on several channels is stored on each within this many messages of its first */
const SEARCH = 20
/** what the runs of recent resumes hold at most */
const RUNS_MAX_BYTES = 32 * 1024 * 1024
const decoder = new TextDecoder()

export interface Stream { name: string, subjects: string, epoch: string }

/** JetStream's direct get (`allow_direct` streams; nats.js has it on its manager without declaring it) */
export interface DirectGet { getMessage(stream: string, query: { last_by_subj: string } | { next_by_subj: string, seq: number }): Promise<StoredMsg> }
export const directOf = (jsm: JetStreamManager): DirectGet => (jsm as unknown as { direct: DirectGet }).direct

/** What is stored now: the last gap's sequence, the subject's last message's (`to`), and the run up to it. */
interface Now { gap: number, to: number, run: Run | undefined }

export class NatsReads {
  private readonly runs = new HistoryRuns(RUNS_MAX_BYTES)
  /** rounds not begun yet, by subject: a resume joins the one that begins after it came */
  private readonly rounds = new Map<string, Promise<Now | null>>()
  /** the last gap each stream was seen to have: its marker ages out, what it says does not */
  private readonly gaps = new Map<string, number>()

  constructor (private readonly direct: () => Promise<DirectGet>) {}

  /** bytes of runs held */
  get bytes (): number { return this.runs.bytes }

  /** The subject's history started again: its run is no more. */
  drop (stream: Stream, subject: string): void { this.runs.drop(stream.epoch + ' ' + subject) }

  /** The messages after `since` (`from`: its sequence, or its first channel's), as they went out; null when not all held. */
  async after (stream: Stream, subject: string, since: string, from: number, limits: HistoryLimits): Promise<string[] | null> {
    const key = stream.epoch + ' ' + subject
    let round = this.rounds.get(key)
    if (round === undefined) {
      round = new Promise<void>((resolve) => setImmediate(resolve)).then(async () => {
        this.rounds.delete(key)
        return await this.now(stream, subject, key, limits)
      })
      this.rounds.set(key, round)
    }
    const now = await round
    if (now === null) return null
    // the run serves a position it holds when it reaches back to where a read would start: a position stored twice on
    // a channel (a change published again) is then found first where a read finds it
    const held = now.run !== undefined && now.run.reach <= from && now.run.links.some((link) => isAt(link, since))
    const run = held ? now.run!.links : await this.read(stream, subject, key, from, now.to, limits, since)
    const i = run === null ? -1 : run.findIndex((link) => isAt(link, since))
    if (run === null || i < 0) return null
    // stored before a gap; or aged out, a keep-alive standing in for it: no gap may have been marked since it
    if ((run[i].position === since ? run[i].seq : from) <= now.gap) return null
    return run.slice(i + 1).flatMap((link) => link.message === null ? [] : [link.message])
  }

  /**
   * One round: the last gap, the subject's last message and the one after the run's last, at once; what lies between
   * read on; then the run's last checked still stored. Null: the subject holds nothing.
   */
  private async now (stream: Stream, subject: string, key: string, limits: HistoryLimits): Promise<Now | null> {
    const known = this.runs.get(key, youngest(limits))
    const tail = known?.links.at(-1)
    const [gap, last, afterTail] = await Promise.all([
      this.get(stream, { last_by_subj: `${stream.subjects}.${GAP}` }),
      this.get(stream, { last_by_subj: subject }),
      tail === undefined ? null : this.get(stream, { next_by_subj: subject, seq: tail.seq + 1 })
    ])
    if (last === null) return null
    let run: Run | undefined
    if (known !== undefined && tail !== undefined) {
      const more = afterTail === null || afterTail.seq > last.seq
        ? []
        : afterTail.seq === last.seq ? [linkOf(stream, afterTail)] : await this.walk(stream, subject, afterTail.seq, last.seq, () => true, 1)
      if (more !== null && (last.seq === tail.seq || await this.stored(stream, subject, tail.seq))) run = more.length === 0 ? known : this.hold(key, [...known.links, ...more], limits, known.reach)
      else this.runs.drop(key)
    }
    // (by stream: a gap is every channel's)
    const streamKey = stream.name + ' ' + stream.epoch
    const seen = Math.max(gap?.seq ?? 0, this.gaps.get(streamKey) ?? 0)
    this.gaps.set(streamKey, seen)
    // (a round that began later may have read on past `to`)
    const end = run?.links.findIndex((link) => link.seq === last.seq) ?? -1
    return { gap: seen, to: last.seq, run: run === undefined || end < 0 ? undefined : { links: run.links.slice(0, end + 1), reach: run.reach } }
  }

  /**
   * Reads the subject from `from` to `to` for a position outside the run, kept as the run when it reaches further back.
   * Its first message still stored after the read: nothing of it was removed meanwhile; else, under steady appends
   * at the subject's size, the one at `since` (what follows it is the answer).
   */
  private async read (stream: Stream, subject: string, key: string, from: number, to: number, limits: HistoryLimits, since: string): Promise<readonly Link[] | null> {
    const read = await this.walk(stream, subject, from, to, (link) => isAt(link, since), SEARCH)
    if (read === null) return null
    if (await this.stored(stream, subject, read[0].seq)) {
      const held = this.runs.get(key, 0)
      if (held === undefined || from <= held.reach) this.hold(key, read, limits, from)
      return read
    }
    const i = read.findIndex((link) => isAt(link, since))
    return i > 0 && await this.stored(stream, subject, read[i].seq) ? read.slice(i) : null
  }

  /**
   * The subject's messages from sequence `from` to `to`, a request each (the one after `from` asked at once: `from` is
   * mostly a message's own); null when none of the first `within` is `at`, or `to` is not reached (purged meanwhile).
   * Removed meanwhile, messages would be skipped: the caller checks the first is still stored.
   */
  private async walk (stream: Stream, subject: string, from: number, to: number, at: (link: Link) => boolean, within: number): Promise<Link[] | null> {
    const ahead = from < to ? this.get(stream, { next_by_subj: subject, seq: from + 1 }) : null
    // (not awaited when `from` is no message's)
    ahead?.catch(() => {})
    const links: Link[] = []
    let found = false
    for (let seq = from; seq <= to;) {
      const stored = await (seq === from + 1 && ahead !== null ? ahead : this.get(stream, { next_by_subj: subject, seq }))
      if (stored === null || stored.seq > to) return null
      const link = linkOf(stream, stored)
      links.push(link)
      found ||= at(link)
      if (!found && links.length >= within) return null
      seq = stored.seq + 1
    }
    return found ? links : null
  }

  /** Whether the subject's message at `seq` is still stored. */
  async stored (stream: Stream, subject: string, seq: number): Promise<boolean> {
    return (await this.get(stream, { next_by_subj: subject, seq }))?.seq === seq
  }

  /** A direct get; null for JetStream's "no message", a failure (a timeout under load) thrown on: the resume fails. */
  async get (stream: Stream, query: { last_by_subj: string } | { next_by_subj: string, seq: number }): Promise<StoredMsg | null> {
    return await (await this.direct()).getMessage(stream.name, query).catch(none)
  }

  private hold (key: string, links: readonly Link[], limits: HistoryLimits, reach: number): Run | undefined {
    this.runs.put(key, links, limits.size, reach)
    return this.runs.get(key, 0)
  }

  /** Every run: the streams are made again (their epochs new). */
  clear (): void {
    this.runs.clear()
    this.gaps.clear()
  }
}

/** The oldest a message served from a run may be (ms since the epoch): half the history's ttl. */
const youngest = (limits: HistoryLimits): number => Date.now() - limits.ttlSeconds * 500

/** A stored message's position: the one it names (a change carried on several channels), or the stream's. */
export function positionOf (stream: Stream, stored: StoredMsg): string {
  // (a header not set reads '')
  const named = stored.header?.get(POSITION) ?? ''
  return named !== '' ? named : stream.epoch + ':' + String(stored.seq)
}

/** A stored message as a resume reads it: a history's start and a keep-alive are no message of the channel. */
function linkOf (stream: Stream, stored: StoredMsg): Link {
  const position = positionOf(stream, stored)
  const kept = stored.header?.get(KEPT) ?? ''
  const message = stored.header?.get(START) === '1' || kept !== '' ? null : withPosition(position, decoder.decode(stored.data))
  return { seq: stored.seq, position, kept, message, time: stored.time.getTime() }
}

/** A read's "no message" (JetStream's 404) as null; any other failure is thrown on. */
function none (err: unknown): null {
  if (err instanceof NatsError && err.code === ErrorCode.JetStream404NoMessages) return null
  throw err
}
