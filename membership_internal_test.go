package kv

import (
	"strings"
	"testing"
)

// The leader promotes so that the number of voters stays odd: a lone
// candidate waits beside an odd count, a pair goes in one after the other,
// and MaxVoters is rounded down to odd.
func TestPromotion_KeepsVotersOdd(t *testing.T) {
	for _, tc := range []struct {
		inService, maxVoters, ready int
		want                        int
		why                         string
	}{
		{inService: 1, maxVoters: 5, ready: 1, want: 0, why: "odd number"},
		{inService: 1, maxVoters: 5, ready: 2, want: 1},
		{inService: 2, maxVoters: 5, ready: 1, want: 1},
		{inService: 3, maxVoters: 5, ready: 1, want: 0, why: "odd number"},
		{inService: 3, maxVoters: 5, ready: 2, want: 1},
		{inService: 4, maxVoters: 5, ready: 1, want: 1},
		{inService: 5, maxVoters: 5, ready: 2, want: 0, why: "MaxVoters"},
		{inService: 3, maxVoters: 4, ready: 2, want: 0, why: "MaxVoters"},
		{inService: 2, maxVoters: 4, ready: 1, want: 1},
		{inService: 5, maxVoters: 7, ready: 1, want: 0, why: "odd number"},
		{inService: 6, maxVoters: 7, ready: 1, want: 1},
		{inService: 3, maxVoters: 3, ready: 3, want: 0, why: "MaxVoters"},
	} {
		got, why := promotion(tc.inService, tc.maxVoters, tc.ready)
		if got != tc.want || tc.want == 0 && !strings.Contains(why, tc.why) {
			t.Errorf("promotion(%d voting, MaxVoters %d, %d ready) = %d, %q; want %d, %q", tc.inService, tc.maxVoters, tc.ready, got, why, tc.want, tc.why)
		}
	}
}
