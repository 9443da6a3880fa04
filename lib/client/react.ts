/**
 * React bindings on useSyncExternalStore: one client (one socket) per app through a provider; hooks that subscribe
 * while mounted. StrictMode's mount/unmount/mount sends one subscribe and no unsubscribe (the client releases a
 * subscription on the next tick only).
 */
import { createContext, createElement, useContext, useEffect, useMemo, useRef, useSyncExternalStore, type ReactNode } from 'react'
import type { ChangefeedClient, ConnectionState, EntityMap, EntitySnapshot, Notification } from './index.js'

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
 * and resync, so it also works as an effect dependency.
 */
export function useEntitySubscription<M extends EntityMap = EntityMap, K extends keyof M & string = keyof M & string> (
  entityType: K, entityId: string, onNotification?: (notification: Notification<M[K]>) => void, options: { tenantId?: string } = {}
): EntitySnapshot<M[K]> {
  const client = useChangefeedClient<M>()
  const { tenantId } = options
  const store = useMemo(() => client.watch(entityType, entityId, { tenantId }), [client, entityType, entityId, tenantId])
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

/** The latest document of an entity, `full` or made whole from a `delta` (undefined until the first one). */
export function useEntity<M extends EntityMap = EntityMap, K extends keyof M & string = keyof M & string> (
  entityType: K, entityId: string, options: { tenantId?: string } = {}
): M[K] | null | undefined {
  return useEntitySubscription<M, K>(entityType, entityId, undefined, options).payload
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
