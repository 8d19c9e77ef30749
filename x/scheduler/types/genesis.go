package types

import "fmt"

// DefaultGenesis has no tasks: modules schedule their own in their InitGenesis.
func DefaultGenesis() *GenesisState {
	return &GenesisState{Params: DefaultParams(), NextId: 1}
}

// Validate checks the genesis state on its own. Whether each task's type is
// registered is checked at InitGenesis, where the registry is known.
func (gs GenesisState) Validate() error {
	if err := gs.Params.Validate(); err != nil {
		return err
	}
	seen := make(map[uint64]bool, len(gs.Tasks)+len(gs.Failed))
	for _, list := range [][]Task{gs.Tasks, gs.Failed} {
		for _, t := range list {
			if seen[t.Id] {
				return fmt.Errorf("%w: task id %d appears twice", ErrInvalidGenesis, t.Id)
			}
			seen[t.Id] = true
			if t.Id >= gs.NextId {
				return fmt.Errorf("%w: task id %d is not below next_id %d", ErrInvalidGenesis, t.Id, gs.NextId)
			}
			if t.Type == "" {
				return fmt.Errorf("%w: task %d has no type", ErrInvalidGenesis, t.Id)
			}
			if t.Period < 0 {
				return fmt.Errorf("%w: task %d has negative period %d", ErrInvalidGenesis, t.Id, t.Period)
			}
		}
	}
	return nil
}
