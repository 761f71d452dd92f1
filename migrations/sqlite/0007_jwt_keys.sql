-- Keys that sign the JWT access tokens of the client-credentials grant. The private key
-- (PKCS#8) is encrypted like the tokens; a key with retire_at still verifies until then.
CREATE TABLE jwt_keys (
    kid          TEXT    NOT NULL PRIMARY KEY,
    private_key  BLOB    NOT NULL,
    public_key   BLOB    NOT NULL,
    created_at   INTEGER NOT NULL,
    retire_at    INTEGER
);
