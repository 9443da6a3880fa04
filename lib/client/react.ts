/**
 * React bindings on useSyncExternalStore: one client (one socket) per app through a provider; hooks that subscribe
 * while mounted. StrictMode's mount/unmount/mount sends one subscribe and no unsubscribe (the client releases a
 * subscription on the next tick only).
 */
import { createContext, createElement, useContext, useEffect, useMemo, useRef, useSyncExternalStore, type ReactNode } from 'react'
import type {
  ChangefeedClient, ConnectionState, EntityMap, EntitySnapshot, LiveQueryOptions, LiveQueryState, Notification, Where
} from './index.js'

/** A client of any entity map: `ChangefeedClient<Entities>` is one (the entity map only narrows what it is asked). */
const ClientContext = createContext<ChangefeedClient<EntityMap> | null>(null)

export function ChangefeedProvider ({ client, children }: { client: ChangefeedClient<EntityMap>, children?: ReactNode }): ReactNode {
  return createElement(ClientContext.Provider, { value: client }, children)
}

/** The provider's client, typed by the caller's entity map (the provider cannot know it: the caller states it). */
export function useChangefeedClient<M extends EntityMap = EntityMap> (): ChangefeedClient<M> {
  const client = useContext(ClientContext)
  if (client === null) throw new Error('useChangefeedClient: wrap the app in <ChangefeedProvider client={…}>')
  return client as ChangefeedClient<M>
}

/**
 * Watches an entity while the component is mounted and re-renders on each change. `onNotification` (optional)
 * runs for every notification, e.g. to refetch on a minimal one; `snapshot.revision` changes on every notification
 * and resync, so it also works as an effect dependency. `snapshot: true`: `payload` holds the entity's document
 * from the subscription's start (null: none).
 */
export function useEntitySubscription<M extends EntityMap = EntityMap, K extends keyof M & string = keyof M & string> (
  entityType: K, entityId: string, onNotification?: (notification: Notification<M[K]>) => void, options: { tenantId?: string, snapshot?: boolean } = {}
): EntitySnapshot<M[K]> {
  const client = useChangefeedClient<M>()
  const { tenantId, snapshot: initial } = options
  const store = useMemo(() => client.watch(entityType, entityId, { tenantId, snapshot: initial }), [client, entityType, entityId, tenantId, initial])
  const snapshot = useSyncExternalStore(store.subscribe, store.getSnapshot, store.getSnapshot)
  const handler = useRef(onNotification)
  handler.current = onNotification
  const seen = useRef<Notification<M[K]> | undefined>(undefined)
  useEffect(() => {
    const notification = snapshot.notification
    if (notification !== undefined && notification !== seen.current) {
      seen.current = notification
      handler.current?.(notification)
    }
  }, [snapshot.notification])
  return snapshot
}

/**
 * The document of an entity: its state when the subscription began (a snapshot), then each change, `full` or made
 * whole from a `delta`. Undefined until the server answers (and for minimal types); null when there is none.
 */
export function useEntity<M extends EntityMap = EntityMap, K extends keyof M & string = keyof M & string> (
  entityType: K, entityId: string, options: { tenantId?: string } = {}
): M[K] | null | undefined {
  return useEntitySubscription<M, K>(entityType, entityId, undefined, { tenantId: options.tenantId, snapshot: true }).payload
}

/**
 * Many entities of one type, each's state by id (`status`, and `payload`, the document from the snapshot on): one
 * request for all of them. Re-renders when any of them changes.
 */
export function useEntities<M extends EntityMap = EntityMap, K extends keyof M & string = keyof M & string> (
  entityType: K, entityIds: readonly string[], options: { tenantId?: string } = {}
): ReadonlyMap<string, EntitySnapshot<M[K]>> {
  const client = useChangefeedClient<M>()
  const { tenantId } = options
  // ids hold no control characters: joined with one, they name the list whatever array holds them
  const ids = entityIds.join('\u0000')
  const store = useMemo(() => client.watchMany(entityType, ids === '' ? [] : ids.split('\u0000'), { tenantId, snapshot: true }), [client, entityType, ids, tenantId])
  return useSyncExternalStore(store.subscribe, store.getSnapshot, store.getSnapshot)
}

/**
 * A live query: the entities of a type whose document matches `where`, by id (`entities`), and `status` (pending
 * until the first snapshot, then ready; error when refused). Re-renders on every change of the matches.
 */
export function useLiveQuery<M extends EntityMap = EntityMap, K extends keyof M & string = keyof M & string> (
  entityType: K, where: Where, options: LiveQueryOptions = {}
): LiveQueryState<M[K]> {
  const client = useChangefeedClient<M>()
  const { tenantId, snapshot } = options
  // a new object each render with the same conditions is the same query
  const conditions = JSON.stringify(where)
  const store = useMemo(() => client.watchWhere(entityType, JSON.parse(conditions) as Where, { tenantId, snapshot }), [client, entityType, conditions, tenantId, snapshot])
  return useSyncExternalStore(store.subscribe, store.getSnapshot, store.getSnapshot)
}

/** "N watching": the number of sockets watching the entity across the cluster (undefined until known). */
export function useWatcherCount (entityType: string, entityId: string, options: { tenantId?: string } = {}): number | undefined {
  const client = useChangefeedClient()
  const { tenantId } = options
  const store = useMemo(() => client.watch(entityType, entityId, { counted: true, tenantId }), [client, entityType, entityId, tenantId])
  return useSyncExternalStore(store.subscribe, store.getSnapshot, store.getSnapshot).watchers
}

/** The connection state: idle, connecting, open, reconnecting, unauthorized, closed. */
export function useConnectionState (): ConnectionState {
  const client = useChangefeedClient()
  return useSyncExternalStore((onChange) => client.onState(onChange), () => client.state, () => client.state)
}
