import BallonetHost

ControlCommand.main()
