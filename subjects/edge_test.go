package subjects

import (
	"strings"
	"testing"
)

func TestCheckInstanceID(t *testing.T) {
	for _, ok := range []string{"a", "edge-1", "ip-10-0-0-7.ec2.internal", "A_b.C", strings.Repeat("x", MaxInstanceIDLen)} {
		if err := CheckInstanceID(ok); err != nil {
			t.Errorf("CheckInstanceID(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", strings.Repeat("x", MaxInstanceIDLen+1), "a~b", "a b", ".a", "a.", "a..b", "a/b", "é"} {
		if err := CheckInstanceID(bad); err == nil {
			t.Errorf("CheckInstanceID(%q) = nil, want an error", bad)
		}
	}
}

func TestEdgeConnID(t *testing.T) {
	id := NewEdgeConnID("edge-1")
	if inst, ok := EdgeInstance(id); !ok || inst != "edge-1" {
		t.Fatalf("EdgeInstance(%q) = %q, %v; want edge-1", id, inst, ok)
	}
	if id == NewEdgeConnID("edge-1") {
		t.Error("two ids alike")
	}
	// The token codec carries it like any id.
	if back, err := ConnID(Token(id)); err != nil || back != id {
		t.Errorf("token round trip: %q, %v", back, err)
	}
	// API Gateway's ids (base64) and malformed ones name no instance.
	for _, id := range []string{"L5bZ4yiH7c2a+/==", "~abc", "edge-1~", "a b~xyz", ""} {
		if inst, ok := EdgeInstance(id); ok {
			t.Errorf("EdgeInstance(%q) = %q, want none", id, inst)
		}
	}
	if got := MustNew("ws").GatewayBucket(); got != "WS_GATEWAYS" {
		t.Errorf("GatewayBucket = %q", got)
	}
}

func TestCheckPushToken(t *testing.T) {
	for _, ok := range []string{"", "s3cret", strings.Repeat("a", MaxPushTokenLen)} {
		if err := CheckPushToken(ok); err != nil {
			t.Errorf("CheckPushToken(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"a b", "a\nb", "é", strings.Repeat("a", MaxPushTokenLen+1)} {
		if err := CheckPushToken(bad); err == nil {
			t.Errorf("CheckPushToken(%q) = nil, want an error", bad)
		}
	}
}
