package bridge

import (
	"fmt"
	"slices"
	"testing"
)

func TestIndex(t *testing.T) {
	x := newIndex()
	rec := func(user string, groups ...string) []byte {
		g := jsonList(groups)
		return []byte(fmt.Sprintf(`{"userId":%q,"groups":%s,"requestContext":{"userId":"not-this"}}`, user, g))
	}
	// Enough members to turn the sets into maps, and back to empty.
	const n = 3 * smallSet
	for i := range n {
		x.put(fmt.Sprintf("t%03d", i), rec(fmt.Sprintf("u%d", i%2), "all", fmt.Sprintf("g%d", i%3)))
	}
	x.put("solo", rec("", "one"))
	x.put("bad", []byte("not json"))
	if got, want := x.size(), n+2; got != want {
		t.Fatalf("size: got %d, want %d", got, want)
	}
	if got := len(x.group("all", nil)); got != n {
		t.Errorf("group all: got %d members, want %d", got, n)
	}
	if got := len(x.user("u1", map[string]bool{"t001": true})); got != n/2-1 {
		t.Errorf("user u1 minus one: got %d, want %d", got, n/2-1)
	}
	if got := x.group("one", nil); !slices.Equal(got, []string{"solo"}) {
		t.Errorf("group one: got %v", got)
	}
	if got := x.user("not-this", nil); len(got) != 0 {
		t.Errorf("nested userId indexed: %v", got)
	}
	if got := x.all(nil); len(got) != n+2 || !slices.IsSorted(got) {
		t.Errorf("all: got %d tokens (sorted %v)", len(got), slices.IsSorted(got))
	}
	// A changed record moves the connection; an unchanged one is a no-op.
	x.put("solo", rec("u9", "two", "two"))
	x.put("solo", rec("u9", "two", "two"))
	if got := x.group("one", nil); len(got) != 0 {
		t.Errorf("group one after regroup: got %v", got)
	}
	if got := x.group("two", nil); !slices.Equal(got, []string{"solo"}) {
		t.Errorf("group two: got %v", got)
	}
	if got := x.user("u9", nil); !slices.Equal(got, []string{"solo"}) {
		t.Errorf("user u9: got %v", got)
	}
	for i := range n {
		x.remove(fmt.Sprintf("t%03d", i))
	}
	x.remove("solo")
	x.remove("solo")
	if got := x.size(); got != 1 {
		t.Errorf("size after removals: got %d, want 1", got)
	}
	if len(x.byGroup) != 0 || len(x.byUser) != 0 {
		t.Errorf("sets left behind: %d groups, %d users", len(x.byGroup), len(x.byUser))
	}
	if got := x.group("all", nil); got == nil || len(got) != 0 {
		t.Errorf("empty group: got %#v, want an empty slice", got)
	}
}

func jsonList(groups []string) string {
	s := "["
	for i, g := range groups {
		if i > 0 {
			s += ","
		}
		s += fmt.Sprintf("%q", g)
	}
	return s + "]"
}

// Item 6 of issue 7, for records written directly to the bucket: a group
// listed twice (or 60,000 groups, many repeated) is indexed as a set, so
// removing the record removes it from every group, in linear time.
func TestIndexGroupsAreSets(t *testing.T) {
	x := newIndex()
	groups := make([]string, 0, 60000)
	for i := 0; i < 60000; i++ {
		groups = append(groups, fmt.Sprintf("g%d", i%1000))
	}
	x.put("big", []byte(`{"groups":`+jsonList(groups)+`}`))
	x.put("dup", []byte(`{"groups":["g1","g1"]}`))
	if got := x.group("g1", nil); len(got) != 2 {
		t.Errorf("g1 members %v, want big and dup once each", got)
	}
	x.put("dup", []byte(`{"groups":[]}`))
	x.remove("big")
	if got := x.group("g1", nil); len(got) != 0 {
		t.Errorf("g1 members after removal %v", got)
	}
}
