// A real OpenID provider for the tests: the certified `oidc-provider` package (npm) on Debian's Node.
// usage: node provider.mjs PORT REDIRECT_URI CLIENT_SECRET   (prints "ready" when listening)
// Users (any password): jdoe → radiologist, vera → viewer, sam → data-steward. devInteractions
// serves the login and consent forms. A second client "other" exists for wrong-audience tests.
import { createRequire } from "node:module";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const moduleDir = process.env.OIDC_PROVIDER_DIR || here;
const { default: Provider } = await import(
  path.join(moduleDir, "node_modules", "oidc-provider", "lib", "index.js")
);
void createRequire;

const [port, redirectUri, secret] = process.argv.slice(2);
const issuer = `http://127.0.0.1:${port}`;
const roles = { jdoe: ["radiologist"], vera: ["viewer"], sam: ["data-steward"] };

const client = (id) => ({
  client_id: id,
  client_secret: secret,
  redirect_uris: [redirectUri],
  response_types: ["code"],
  grant_types: ["authorization_code"],
  token_endpoint_auth_method: "client_secret_basic",
});

const provider = new Provider(issuer, {
  clients: [client("radloop"), client("other")],
  pkce: { required: () => true, methods: ["S256"] },
  claims: { openid: ["sub"], profile: ["preferred_username", "roles"] },
  conformIdTokenClaims: false, // profile claims go into the ID token (radloop reads roles there)
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ["radloop-test-cookie-key-0123456789"] },
  ttl: { IdToken: 300, AccessToken: 300, AuthorizationCode: 60, Session: 600, Interaction: 600, Grant: 600 },
  findAccount: async (ctx, id) => ({
    accountId: id,
    claims: async () => ({ sub: id, preferred_username: id, roles: roles[id] || [] }),
  }),
  loadExistingGrant: async (ctx) => {
    // consent given up front: the test users trust radloop
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope("openid profile");
    grant.addOIDCClaims(["preferred_username", "roles"]);
    await grant.save();
    return grant;
  },
});
provider.listen(Number(port), "127.0.0.1", () => console.log("ready"));
