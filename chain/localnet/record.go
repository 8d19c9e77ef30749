package localnet

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cosmos/cosmos-sdk/crypto/keys/secp256k1"
	sdk "github.com/cosmos/cosmos-sdk/types"

	"github.com/devshard/devshard/chain/node"
)

// record is what Start needs to resume a network: its nodes, their ports
// and the keys of its accounts. It is kept in Home as network.json. The
// keys are there in the clear, as in a test keyring: a local network's
// keys guard nothing.
type record struct {
	ChainID          string          `json:"chain_id"`
	BlockTime        time.Duration   `json:"block_time"`
	SnapshotInterval uint64          `json:"snapshot_interval"`
	Nodes            []nodeRecord    `json:"nodes"`
	Accounts         []accountRecord `json:"accounts"`
}

type nodeRecord struct {
	Name      string         `json:"name"`
	Validator bool           `json:"validator"`
	NodeID    string         `json:"node_id"`
	Ports     nodePorts      `json:"ports"`
	Peers     []string       `json:"peers"`
	Operator  *accountRecord `json:"operator,omitempty"`
}

type nodePorts struct {
	P2P  int `json:"p2p"`
	RPC  int `json:"rpc"`
	GRPC int `json:"grpc"`
	API  int `json:"api"`
}

func (nr nodeRecord) p2pAddress() string {
	return fmt.Sprintf("%s@127.0.0.1:%d", nr.NodeID, nr.Ports.P2P)
}

func (nr nodeRecord) grpcAddress() string { return fmt.Sprintf("127.0.0.1:%d", nr.Ports.GRPC) }

type accountRecord struct {
	Name     string `json:"name"`
	Mnemonic string `json:"mnemonic,omitempty"`
	Key      []byte `json:"key"`
	Coins    string `json:"coins"`
}

func accountRecordOf(a node.Account) accountRecord {
	return accountRecord{Name: a.Name, Mnemonic: a.Mnemonic, Key: a.Key.Key, Coins: a.Coins.String()}
}

func (r accountRecord) account() (node.Account, error) {
	coins, err := sdk.ParseCoinsNormalized(r.Coins)
	if err != nil {
		return node.Account{}, fmt.Errorf("account %q: %w", r.Name, err)
	}
	a := node.Account{Name: r.Name, Mnemonic: r.Mnemonic, Key: &secp256k1.PrivKey{Key: r.Key}, Coins: coins}
	return a, a.Derive()
}

func (r *record) accounts() ([]node.Account, error) {
	var out []node.Account
	for _, ar := range r.Accounts {
		a, err := ar.account()
		if err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

func readRecord(home string) (*record, error) {
	raw, err := os.ReadFile(filepath.Join(home, recordFile))
	if err != nil {
		return nil, err
	}
	var r record
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, fmt.Errorf("reading the network in %s: %w", home, err)
	}
	return &r, nil
}

// write replaces the record in home at once, so that a crash leaves the
// old one or the new.
func (r *record) write(home string) error {
	raw, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(home, recordFile+".tmp")
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(home, recordFile))
}
