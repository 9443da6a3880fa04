/**
 * The handles the client gives out (subscribe(), subscribeWhere()): one shape over the state of what they hold. A
 * handle is also the function that closes it, as subscribe() handed out a function before it handed out handles.
 */
import type { Held } from './held.js'
import type { SubscriptionHandle } from './types.js'

/**
 * A handle of `held`, which it holds already, with the state's `field` (the document, the matches) read at once;
 * `left`: what else closing it undoes.
 */
export function handleOf<S extends { status: string, revision: number }> (held: Held<S>, field: keyof S & string, left?: () => void): SubscriptionHandle<S> {
  const watchers = new Set<(state: S) => void>()
  let open = true
  const close = (): void => {
    if (!open) return
    open = false
    for (const watcher of watchers) held.watchers.delete(watcher)
    left?.()
    held.release()
  }
  return Object.defineProperties(close, Object.getOwnPropertyDescriptors({
    subscriptionId: held.key,
    get status () { return held.snapshot.status },
    get [field] () { return held.snapshot[field] },
    getSnapshot: () => held.snapshot,
    onChange: (listener: (state: S) => void) => {
      // its own function: the same listener given twice is stopped once at a time
      const watcher = (state: S): void => { listener(state) }
      watchers.add(watcher)
      held.watchers.add(watcher)
      return () => { watchers.delete(watcher); held.watchers.delete(watcher) }
    },
    close
  })) as SubscriptionHandle<S>
}
