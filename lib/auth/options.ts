/** The options of authentication and access (part of lib/options.ts). */
import Type from 'typebox'

export const Jwt = Type.Object(
  {
    secret: Type.Optional(Type.String({ description: 'HMAC shared secret (HS256/384/512)' })),
    publicKey: Type.Optional(Type.String({ description: 'PEM public key (RS*/ES*/PS*/EdDSA)' })),
    jwksUrl: Type.Optional(Type.String({ description: 'JWKS endpoint (Clerk-style); keys are cached and rotated' })),
    issuer: Type.Optional(Type.String({ description: 'required `iss`: a token without it, or with another, is refused' })),
    audience: Type.Optional(Type.String({ description: 'required `aud` (the token may list several): a token without it, or without this one, is refused' })),
    requireExpiry: Type.Boolean({ default: true, description: 'refuse tokens without `exp` (on an open socket such a token would never expire)' }),
    algorithms: Type.Optional(Type.Array(Type.String({ pattern: '^(HS|RS|PS|ES)(256|384|512)$|^EdDSA$' }), {
      minItems: 1,
      description: 'allowed algorithms; default: HS* with a secret, the asymmetric ones with a key or JWKS; never `none`'
    })),
    userIdClaim: Type.String({ default: 'sub', description: 'claim holding the user id (dotted path)' }),
    tenantClaim: Type.Optional(Type.String({ description: 'claim holding the user\'s tenant (dotted path): a signed-in user then watches only its own tenant\'s entities of tenanted types, unless it has an admin role' })),
    rolesClaim: Type.String({ default: 'roles', description: 'claim holding the roles (dotted path, e.g. metadata.role)' })
  },
  { additionalProperties: false }
)

export const Auth = Type.Object(
  {
    anonymous: Type.Boolean({ default: true, description: 'allow connections without credentials (public types only)' }),
    jwt: Type.Optional(Jwt),
    basic: Type.Optional(
      Type.Object(
        {
          accounts: Type.Array(
            Type.Object(
              {
                username: Type.String({ description: 'service account name' }),
                passwordHash: Type.String({ description: 'scrypt hash: scrypt$<N>$<r>$<p>$<salt>$<hash>' }),
                roles: Type.Array(Type.String(), { default: [], description: 'roles of the account' }),
                tenant: Type.Optional(Type.String({ description: 'the tenant the account belongs to (none: like a user without a tenant claim)' }))
              },
              { additionalProperties: false }
            )
          )
        },
        { additionalProperties: false }
      )
    ),
    adminRoles: Type.Array(Type.String(), { default: ['Admin'], description: 'roles that may watch `admin` types (and everything else)' })
  },
  { default: {}, additionalProperties: false }
)
