/**
 * The channels of a change that someone watches: only they get it. A channel that keeps a history but that nobody
 * watches does not get the change, so its history could not tell what came after: it starts again (a new epoch), and
 * a resume from before is refused (the client refetches) rather than told of nothing.
 */
import type { ChannelHistory } from '../bus/history.js'
import type { InterestStore } from '../interest/interest.js'

/** `history`: the bus's, when the change's type keeps one (null: none). */
export async function watchedOf (interest: Pick<InterestStore, 'isWatched'>, channels: readonly string[], history: Pick<ChannelHistory, 'reset'> | null): Promise<string[]> {
  const watched = await anyoneWatches(interest, channels)
  if (history === null || watched.length === channels.length) return watched
  const missed = channels.filter((channel) => !watched.includes(channel))
  for (const channel of missed) await history.reset(channel)
  // looked at again: a watcher that came meanwhile read the history before it started again (and gets the change
  // live now), or after (and was refused)
  const now = await anyoneWatches(interest, missed)
  return now.length === 0 ? watched : channels.filter((channel) => watched.includes(channel) || now.includes(channel))
}

async function anyoneWatches (interest: Pick<InterestStore, 'isWatched'>, channels: readonly string[]): Promise<string[]> {
  const watched: string[] = []
  for (const channel of channels) if (await interest.isWatched(channel)) watched.push(channel)
  return watched
}
