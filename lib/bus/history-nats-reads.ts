/**
 * How the NATS history (lib/bus/history-nats.ts) reads a channel's past for a resume. JetStream's direct get reads one
 * message a request (the servers supported have no batched get), so a resume that walked the subject cost a round
 * trip per message, and resumes queued behind each other under load. Here:
 *
 * - what is stored now (the last gap marked, the subject's last message, and whether the run read before still
 *   stands and what follows it) is asked in one round of requests, shared by every resume of the subject that came
 *   before the round began (so each sees all that was stored before it asked);
 * - the messages are taken from the run this process read before (lib/bus/history-runs.ts), extended from its last
 *   message while that is still stored; a position outside it is read from JetStream, and the run kept.
 */
import { ErrorCode, NatsError, type JetStreamManager, type StoredMsg } from 'nats'
import { withPosition, type HistoryLimits } from './history.js'
import { HistoryRuns, isAt, type Link } from './history-runs.js'

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
interface Now { gap: number, to: number, run: readonly Link[] | undefined }

export class NatsReads {
  private readonly runs = new HistoryRuns(RUNS_MAX_BYTES)
  /** rounds not begun yet, by subject: a resume joins the one that begins after it came */
  private readonly rounds = new Map<string, Promise<Now | null>>()

  constructor (private readonly direct: () => Promise<DirectGet>) {}

  /** bytes of runs held */
  get bytes (): number { return this.runs.bytes }

  /** The subject's history started again: its run is no more. */
  drop (subject: string): void { this.runs.drop(subject) }

  /** The messages after `since` (`from`: its sequence, or its first channel's), as they went out; null when not all held. */
  async after (stream: Stream, subject: string, since: string, from: number, limits: HistoryLimits): Promise<string[] | null> {
    let round = this.rounds.get(subject)
    if (round === undefined) {
      round = new Promise<void>((resolve) => setImmediate(resolve)).then(async () => {
        this.rounds.delete(subject)
        return await this.now(stream, subject, limits)
      })
      this.rounds.set(subject, round)
    }
    const now = await round
    if (now === null) return null
    const run = now.run?.some((link) => isAt(link, since)) === true ? now.run : await this.read(stream, subject, from, now.to, limits, since)
    const i = run === null ? -1 : run.findIndex((link) => isAt(link, since))
    if (run === null || i < 0) return null
    // stored before a gap; or aged out, a keep-alive standing in for it: no gap may have been marked since it
    if ((run[i].position === since ? run[i].seq : from) <= now.gap) return null
    const out: string[] = []
    for (const link of run.slice(i + 1)) {
      // the history started again after it (emptied meanwhile)
      if (link.start) return null
      if (link.message !== null) out.push(link.message)
    }
    return out
  }

  /**
   * One round of requests at once: the last gap, the subject's last message, and, with a run read before, its last
   * message (still stored: nothing of the run was purged) and the one after it. Null: the subject holds nothing.
   */
  private async now (stream: Stream, subject: string, limits: HistoryLimits): Promise<Now | null> {
    const direct = await this.direct()
    const get = async (seq: number): Promise<StoredMsg | null> => await direct.getMessage(stream.name, { next_by_subj: subject, seq }).catch(none)
    const known = this.runs.get(subject, Date.now() - limits.ttlSeconds * 1000)
    const tail = known?.at(-1)
    // a read that failed (a timeout under load) is no "none": the resume fails
    const [gap, last, atTail, afterTail] = await Promise.all([
      direct.getMessage(stream.name, { last_by_subj: `${stream.subjects}.${GAP}` }).catch(none),
      direct.getMessage(stream.name, { last_by_subj: subject }).catch(none),
      tail === undefined ? null : get(tail.seq),
      tail === undefined ? null : get(tail.seq + 1)
    ])
    if (last === null) return null
    let run: readonly Link[] | undefined
    if (known !== undefined && atTail?.seq === tail?.seq) {
      if (afterTail === null || afterTail.seq > last.seq) run = known
      else {
        const more = afterTail.seq === last.seq ? [] : await this.walk(stream, subject, afterTail.seq + 1, last.seq, () => true, 1)
        if (more !== null) run = this.hold(subject, [...known, linkOf(stream, afterTail), ...more], limits)
      }
    } else this.runs.drop(subject)
    // (a round that began later may have read on past `to`)
    const end = run?.findIndex((link) => link.seq === last.seq) ?? -1
    return { gap: gap?.seq ?? 0, to: last.seq, run: end < 0 ? undefined : run?.slice(0, end + 1) }
  }

  /** Reads the subject from `from` to `to` for a position outside the run; kept when it starts no later than the run. */
  private async read (stream: Stream, subject: string, from: number, to: number, limits: HistoryLimits, since: string): Promise<readonly Link[] | null> {
    const read = await this.walk(stream, subject, from, to, (link) => isAt(link, since), SEARCH)
    const held = this.runs.get(subject, 0)
    if (read !== null && (held === undefined || read[0].seq <= held[0].seq)) this.hold(subject, read, limits)
    return read
  }

  /**
   * The subject's messages from sequence `from` to `to`, a request each (the one after `from` asked at once: `from` is
   * mostly a message's own); null when none of the first `within` is `at`, or `to` is not reached (purged meanwhile).
   */
  private async walk (stream: Stream, subject: string, from: number, to: number, at: (link: Link) => boolean, within: number): Promise<Link[] | null> {
    const direct = await this.direct()
    const get = async (seq: number): Promise<StoredMsg | null> => await direct.getMessage(stream.name, { next_by_subj: subject, seq }).catch(none)
    const ahead = from < to ? get(from + 1) : null
    // (not awaited when `from` is no message's)
    ahead?.catch(() => {})
    const links: Link[] = []
    let found = false
    for (let seq = from; seq <= to;) {
      const stored = await (seq === from + 1 && ahead !== null ? ahead : get(seq))
      if (stored === null || stored.seq > to) return null
      const link = linkOf(stream, stored)
      links.push(link)
      found ||= at(link)
      if (!found && links.length >= within) return null
      seq = stored.seq + 1
    }
    return found ? links : null
  }

  private hold (subject: string, links: readonly Link[], limits: HistoryLimits): readonly Link[] | undefined {
    this.runs.put(subject, links, limits.size)
    return this.runs.get(subject, 0)
  }
}

/** A stored message's position: the one it names (a change carried on several channels), or the stream's. */
export function positionOf (stream: Stream, stored: StoredMsg): string {
  // (a header not set reads '')
  const named = stored.header?.get(POSITION) ?? ''
  return named !== '' ? named : stream.epoch + ':' + String(stored.seq)
}

/** A stored message as a resume reads it: a history's start and a keep-alive are no message of the channel. */
function linkOf (stream: Stream, stored: StoredMsg): Link {
  const position = positionOf(stream, stored)
  const start = stored.header?.get(START) === '1'
  const kept = stored.header?.get(KEPT) ?? ''
  const message = start || kept !== '' ? null : withPosition(position, decoder.decode(stored.data))
  return { seq: stored.seq, position, kept, message, start, time: stored.time.getTime() }
}

/** A read's "no message" (JetStream's 404) as null; any other failure is thrown on. */
export function none (err: unknown): null {
  if (err instanceof NatsError && err.code === ErrorCode.JetStream404NoMessages) return null
  throw err
}
