package host

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/devshard/devshard/executor"
	"github.com/devshard/devshard/hostapi"
	"github.com/devshard/devshard/httpauth"
	"github.com/devshard/devshard/session"
	"github.com/devshard/devshard/session/sessionpb"
)

// sendRun posts diffs ds to host i as one delivery.
func (b *hostBundle) sendRun(t *testing.T, i int, ds []*sessionpb.Diff, reqs []map[uint64]executor.Request) (int, hostapi.DiffResponse, string) {
	t.Helper()
	body := hostapi.DiffRequest{}
	for j, d := range ds {
		raw, err := d.Marshal()
		require.NoError(t, err)
		it := hostapi.DiffItem{Diff: raw}
		if reqs != nil {
			it.Requests = reqs[j]
		}
		body.Diffs = append(body.Diffs, it)
	}
	status, out := b.gwPost(t, i, fmt.Sprintf("/v1/sessions/%d/diffs", ds[0].EscrowId), body)
	var resp hostapi.DiffResponse
	if status == http.StatusOK {
		require.NoError(t, json.Unmarshal(out, &resp))
	}
	return status, resp, string(out)
}

// build has the gateway sequence n empty diffs.
func (b *hostBundle) build(t *testing.T, n int) []*sessionpb.Diff {
	t.Helper()
	var out []*sessionpb.Diff
	for range n {
		d, err := b.gw.Next()
		require.NoError(t, err)
		out = append(out, d)
	}
	return out
}

// A run of diffs in one delivery costs the host one durable commit and one
// signature: over the last root, which the reply carries.
func TestARunOfDiffsIsOneCommitAndOneSignature(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ds := b.build(t, 3)
	root := b.gw.Replica.Root()
	status, resp, body := b.sendRun(t, 0, ds, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, uint64(3), resp.Nonce)
	require.Equal(t, hex.EncodeToString(root[:]), resp.Root)
	require.Len(t, resp.Signatures, 1)
	var ss sessionpb.StateSignature
	require.NoError(t, ss.Unmarshal(resp.Signatures[0]))
	require.Equal(t, uint64(3), ss.Nonce)
	require.NoError(t, session.VerifyStateSignature(b.f.Snapshot, &ss, nil))

	st := b.stores[0]
	st.mu.Lock()
	appends, diffs := st.appends, st.diffs
	st.mu.Unlock()
	require.Equal(t, 1, appends, "one durable commit for the run")
	require.Equal(t, 3, diffs)
	stored, err := st.Diffs(t.Context(), b.f.Snapshot.EscrowId, 1, 10)
	require.NoError(t, err)
	require.Len(t, stored, 3, "every diff of the run is stored")
	for n := uint64(1); n <= 2; n++ {
		sigs, err := st.Signatures(t.Context(), b.f.Snapshot.EscrowId, n)
		require.NoError(t, err)
		require.Empty(t, sigs, "nonce %d inside the run is not signed", n)
	}

	// The same run again is a replay: same answer, no new write.
	status, again, body := b.sendRun(t, 0, ds, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, resp.Signatures, again.Signatures)
	st.mu.Lock()
	require.Equal(t, 1, st.appends)
	st.mu.Unlock()

	// A run that starts among stored diffs applies only what is new.
	more := b.build(t, 2)
	status, resp, body = b.sendRun(t, 0, append(ds[1:], more...), nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, uint64(5), resp.Nonce)
	require.Len(t, resp.Signatures, 1)
}

// Diffs of a delivery must follow each other.
func TestARunMustBeConsecutive(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ds := b.build(t, 3)
	status, _, body := b.sendRun(t, 0, []*sessionpb.Diff{ds[0], ds[2]}, nil)
	require.Equal(t, http.StatusBadRequest, status, body)
	require.Contains(t, body, "consecutive nonces")
	status, _, body = b.sendRun(t, 0, []*sessionpb.Diff{ds[1], ds[2]}, nil)
	require.Equal(t, http.StatusConflict, status, body, "a run past a gap is refused like a lone diff past it")

	raw, err := ds[0].Marshal()
	require.NoError(t, err)
	status, out := b.gwPost(t, 0, fmt.Sprintf("/v1/sessions/%d/diffs", ds[0].EscrowId), hostapi.DiffRequest{Diff: raw, Diffs: []hostapi.DiffItem{{Diff: raw}}})
	require.Equal(t, http.StatusBadRequest, status)
	require.Contains(t, string(out), "not both")
	too := hostapi.DiffRequest{Diffs: make([]hostapi.DiffItem, hostapi.MaxDiffsPerDelivery+1)}
	status, out = b.gwPost(t, 0, fmt.Sprintf("/v1/sessions/%d/diffs", ds[0].EscrowId), too)
	require.Equal(t, http.StatusBadRequest, status)
	require.Contains(t, string(out), "at most")
}

// A refused diff inside a run keeps the good diffs before it: they are
// stored, unsigned, and the refusal is the answer. Asked again for the
// latest of them, the host signs it then.
func TestARunCutShortByABadDiffKeepsWhatCameBefore(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ds := b.build(t, 3)
	bad := *ds[2]
	bad.PostStateRoot = make([]byte, 32)
	require.NoError(t, session.SignDiff(b.f.Gateway, b.f.Snapshot.ChainId, &bad))
	status, _, body := b.sendRun(t, 0, []*sessionpb.Diff{ds[0], ds[1], &bad}, nil)
	require.Equal(t, http.StatusBadRequest, status, body)
	require.Contains(t, body, "root")

	stored, err := b.stores[0].Diffs(t.Context(), b.f.Snapshot.EscrowId, 1, 10)
	require.NoError(t, err)
	require.Len(t, stored, 2, "the diffs before the refused one are stored")
	sigs, err := b.stores[0].Signatures(t.Context(), b.f.Snapshot.EscrowId, 2)
	require.NoError(t, err)
	require.Empty(t, sigs)

	status, resp, body := b.send(t, 0, ds[1], nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Len(t, resp.Signatures, 1, "the latest stored diff is signed when asked for again")
	sigs, err = b.stores[0].Signatures(t.Context(), b.f.Snapshot.EscrowId, 2)
	require.NoError(t, err)
	require.Len(t, sigs, 1, "and the signature is stored")

	status, resp, body = b.send(t, 0, ds[2], nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, uint64(3), resp.Nonce)
}

// If the store fails under a run, the host answers from what is stored
// (the run was staged, never committed to memory), and the same run
// applies once the store is back.
func TestAFailedWriteOfARunAnswersFromWhatIsStored(t *testing.T) {
	t.Parallel()
	b := setup(t)
	first := b.build(t, 1)
	status, _, body := b.sendRun(t, 0, first, nil)
	require.Equal(t, http.StatusOK, status, body)

	ds := b.build(t, 3)
	st := b.stores[0]
	st.mu.Lock()
	st.fail = true
	st.mu.Unlock()
	status, _, body = b.sendRun(t, 0, ds, nil)
	require.Equal(t, http.StatusServiceUnavailable, status, body)

	en, err := b.hosts[0].session(t.Context(), b.f.Snapshot.EscrowId)
	require.NoError(t, err)
	nonce := en.s.Nonce()
	en.mu.Unlock()
	require.Equal(t, uint64(1), nonce, "the session is back where storage is, not where the failed run took memory")

	st.mu.Lock()
	st.fail = false
	st.mu.Unlock()
	status, resp, body := b.sendRun(t, 0, ds, nil)
	require.Equal(t, http.StatusOK, status, body)
	require.Equal(t, uint64(4), resp.Nonce)
	root := b.gw.Replica.Root()
	require.Equal(t, hex.EncodeToString(root[:]), resp.Root)
}

// A member the gateway left behind (diffs held for it never came) catches
// up from a peer's stored diffs, which carry the gateway's signature, and
// then signs the same latest root as the peer: the group can settle
// without the gateway.
func TestAMemberLeftBehindCatchesUpFromAPeer(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ds := b.build(t, 4)
	status, ahead, body := b.sendRun(t, 0, ds, nil)
	require.Equal(t, http.StatusOK, status, body)
	status, _, body = b.sendRun(t, 1, ds[:1], nil)
	require.Equal(t, http.StatusOK, status, body)

	// Host 1 reads host 0's stored diffs past its own nonce.
	req, err := http.NewRequest(http.MethodGet, fmt.Sprintf("%s/v1/sessions/%d/diffs?from=2", b.urls[0], b.f.Snapshot.EscrowId), nil)
	require.NoError(t, err)
	require.NoError(t, httpauth.Sign(req, nil, b.f.Hosts[1], to(b.hosts[0].Address()), time.Now()))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var got struct {
		Diffs []struct {
			Data []byte `json:"data"`
		} `json:"diffs"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&got))
	require.Len(t, got.Diffs, 3)
	items := make([]DiffItem, len(got.Diffs))
	for i, d := range got.Diffs {
		items[i] = DiffItem{Raw: d.Data}
	}
	reply, err := b.hosts[1].ApplyDiffs(t.Context(), b.f.Snapshot.EscrowId, items)
	require.NoError(t, err)
	require.Equal(t, ahead.Root, hex.EncodeToString(reply.Root[:]), "the same root as the peer")

	// Host 2 got diffs 1 to 3 as a run that was cut short at 3 (so 2 is its
	// latest, unsigned); SignLatest signs it.
	bad := *ds[2]
	bad.PostStateRoot = make([]byte, 32)
	require.NoError(t, session.SignDiff(b.f.Gateway, b.f.Snapshot.ChainId, &bad))
	status, _, body = b.sendRun(t, 2, []*sessionpb.Diff{ds[0], ds[1], &bad}, nil)
	require.Equal(t, http.StatusBadRequest, status, body)
	sigs, err := b.hosts[2].OwnSignatures(t.Context(), b.f.Snapshot.EscrowId, 2)
	require.NoError(t, err)
	require.Empty(t, sigs)
	require.NoError(t, b.hosts[2].SignLatest(t.Context(), b.f.Snapshot.EscrowId))
	sigs, err = b.hosts[2].OwnSignatures(t.Context(), b.f.Snapshot.EscrowId, 2)
	require.NoError(t, err)
	require.Len(t, sigs, 1)
	require.NoError(t, session.VerifyStateSignature(b.f.Snapshot, sigs[0], nil))
}
