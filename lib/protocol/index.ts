/** The wire protocol (README.md beside this file): constants and rules, message schemas, and the server's frames. */
export * from './wire.js'
export * from './messages.js'
export * from './encode.js'
export * from './patch.js'
export * from './where.js'
export * from './presence.js'
