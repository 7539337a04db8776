package subjects_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/wsbridge/wsbridge/subjects"
	"github.com/wsbridge/wsbridge/test/natstest"
)

func TestConnOptionsFromEnv(t *testing.T) {
	env := map[string]string{
		"WSBRIDGE_NATS_URL": " nats://a:4222,nats://b:4222 ", "WSBRIDGE_NATS_USER": "u",
		"WSBRIDGE_NATS_PASSWORD": "p", "WSBRIDGE_NATS_TLS_CA": "ca.pem", "NATS_URL": "ignored",
	}
	got := subjects.ConnOptionsFromEnv(func(k string) string { return env[k] })
	want := subjects.ConnOptions{URL: "nats://a:4222,nats://b:4222", User: "u", Password: "p", TLSCA: "ca.pem"}
	if got != want {
		t.Errorf("ConnOptionsFromEnv = %+v, want %+v", got, want)
	}
}

func TestConnOptionsValidate(t *testing.T) {
	tests := []struct {
		name    string
		o       subjects.ConnOptions
		wantErr bool
	}{
		{"none", subjects.ConnOptions{}, false},
		{"user", subjects.ConnOptions{User: "u", Password: "p"}, false},
		{"token and user", subjects.ConnOptions{Token: "t", User: "u"}, true},
		{"creds and nkey", subjects.ConnOptions{Creds: "c", NKey: "k"}, true},
		{"password alone", subjects.ConnOptions{Password: "p"}, true},
		{"cert without key", subjects.ConnOptions{TLSCert: "c.pem"}, true},
		{"cert and key", subjects.ConnOptions{TLSCert: "c.pem", TLSKey: "k.pem"}, false},
	}
	for _, tt := range tests {
		if err := tt.o.Validate(); (err != nil) != tt.wantErr {
			t.Errorf("%s: Validate() = %v, wantErr %v", tt.name, err, tt.wantErr)
		}
	}
}

func TestRedactURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"nats://127.0.0.1:4222", "nats://127.0.0.1:4222"},
		{"nats://u:secret@h:4222,tls://tok@h2:4222", "nats://redacted@h:4222,tls://redacted@h2:4222"},
		{"h:4222", "h:4222"},
		{"user:s3cret@10.0.0.1:4222", "redacted@10.0.0.1:4222"},
		{"nats://a:4222,u:p@b:4222", "nats://a:4222,redacted@b:4222"},
	}
	for _, tt := range tests {
		if got := subjects.RedactURL(tt.in); got != tt.want {
			t.Errorf("RedactURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestConnectAuth dials real servers that demand each kind of credential.
func TestConnectAuth(t *testing.T) {
	kp, _ := nkeys.CreateUser()
	pub, _ := kp.PublicKey()
	seed, _ := kp.Seed()
	seedFile := filepath.Join(t.TempDir(), "user.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		srv   server.Options
		good  subjects.ConnOptions
		wrong subjects.ConnOptions
	}{
		{"user", server.Options{Username: "u", Password: "p"},
			subjects.ConnOptions{User: "u", Password: "p"}, subjects.ConnOptions{User: "u", Password: "x"}},
		{"token", server.Options{Authorization: "s3cret"},
			subjects.ConnOptions{Token: "s3cret"}, subjects.ConnOptions{Token: "nope"}},
		{"nkey", server.Options{Nkeys: []*server.NkeyUser{{Nkey: pub}}},
			subjects.ConnOptions{NKey: seedFile}, subjects.ConnOptions{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := natstest.Start(t, func(o *server.Options) {
				o.Username, o.Password = tt.srv.Username, tt.srv.Password
				o.Authorization, o.Nkeys = tt.srv.Authorization, tt.srv.Nkeys
			})
			tt.good.URL, tt.wrong.URL = s.ClientURL(), s.ClientURL()
			nc, err := tt.good.Connect()
			if err != nil {
				t.Fatalf("connect with right credentials: %v", err)
			}
			nc.Close()
			if nc, err := tt.wrong.Connect(); err == nil {
				nc.Close()
				t.Fatal("connect with wrong credentials succeeded")
			}
		})
	}
	if _, err := (subjects.ConnOptions{}).Connect(); err == nil {
		t.Error("Connect without URL succeeded")
	}
}

// TestConnectErrorHidesPassword: whatever goes wrong, the error (which ends
// up in logs and in the register function's errMsg) does not quote it.
func TestConnectErrorHidesPassword(t *testing.T) {
	for _, u := range []string{
		"nats://user:s3%zzcret@127.0.0.1:1",
		"user:s3cret@127.0.0.1:1",
		"nats://user:s3cret@127.0.0.1:1",
	} {
		nc, err := (subjects.ConnOptions{URL: u}).Connect()
		if err == nil {
			nc.Close()
			t.Fatalf("connect %s succeeded", u)
		}
		if strings.Contains(err.Error(), "s3") {
			t.Errorf("connect %s: error %q shows the password", u, err)
		}
	}
}

// TestConnOptionsEnviron: what Environ writes, ConnOptionsFromEnv reads back.
func TestConnOptionsEnviron(t *testing.T) {
	want := subjects.ConnOptions{URL: "nats://a:4222,nats://b:4222", Creds: "/c", NKey: "/n", Token: "t", User: "u",
		Password: "p", TLSCA: "/ca", TLSCert: "/cert", TLSKey: "/key"}
	env := map[string]string{}
	for _, kv := range want.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	if got := subjects.ConnOptionsFromEnv(func(k string) string { return env[k] }); got != want {
		t.Errorf("read back %+v, want %+v", got, want)
	}
	if got := (subjects.ConnOptions{URL: "nats://x"}).Environ(); len(got) != 1 || got[0] != subjects.EnvPrefix+"NATS_URL=nats://x" {
		t.Errorf("Environ of a URL alone = %q", got)
	}
}
